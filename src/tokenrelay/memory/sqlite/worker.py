"""The one writer thread of a SQLite store: queued writes, batched into one transaction.

A write is a function of the connection. `write()` queues it and returns its result (or its
exception) when it has committed; `post()` queues it and returns at once (a checkpoint: the
streaming path never waits on the disk). The thread takes every write waiting in the queue
(at most `max_batch`) and runs them in one `BEGIN IMMEDIATE ... COMMIT`, so a thousand
streams checkpointing cost one commit, not a thousand.

Invariants:

* Writes commit in the order they were queued; a write sees every write queued before it.
* A batch is all or nothing; when any write of a batch raises, the batch is rolled back and
  each write is run again alone, in order, in its own transaction: one bad write (a missing
  session, a full disk for a large answer) never loses the others.
* An error reaches whoever awaits the write (`write()`); a posted write's error goes to its
  `on_error` (it is logged; nobody waits for it).
* An awaited write's outcome goes back to its event loop with the batch's: one
  `call_soon_threadsafe` per loop per batch, however many writes the batch held (a thousand
  streams opening their turns wake the loop once, not a thousand times); the waiters resume in
  queue order, `DELIVER_PER_TURN` per loop turn.
* The connection is used only under `lock` (readers on other threads take the same lock).
* `close()` runs every write queued before it, then stops the thread; writes queued after
  it raise `RuntimeError`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = ["WriteWorker"]

T = TypeVar("T")
log = logging.getLogger("tokenrelay.memory")

Write = Callable[[sqlite3.Connection], Any]
OnError = Callable[[BaseException], None]


@dataclass(slots=True)
class _Job:
    fn: Write | None  # None: a barrier, settled once the writes queued before it have run
    #: who waits: a thread (`submit`), a coroutine on `loop` (`write`, `settled`), or nobody (posted)
    future: concurrent.futures.Future[Any] | asyncio.Future[Any] | None
    on_error: OnError | None
    loop: asyncio.AbstractEventLoop | None = None


Outcome = tuple[asyncio.Future[Any], Any, BaseException | None]


#: awaited writes resumed per event-loop turn (see `_deliver`)
DELIVER_PER_TURN = 16


def _deliver(outcomes: list[Outcome], start: int = 0) -> None:
    """On the waiters' loop: each awaited write's result (a cancelled waiter no longer waits),
    `DELIVER_PER_TURN` per loop turn: a batch that finished the turns of a hundred runs resumes
    them a few at a time, so the timers of the streams still running are not held up behind all
    of their end-of-run work at once (a stall of every stream: 8-13 ms at 1,000 streams)."""
    end = start + DELIVER_PER_TURN
    for future, result, error in outcomes[start:end]:
        if not future.done():
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)
    if end < len(outcomes):
        outcomes[0][0].get_loop().call_soon(_deliver, outcomes, end)


def _settle_all(settled: list[tuple[_Job, Any, BaseException | None]]) -> None:
    """Hand a batch's outcomes to whoever waits: loop futures grouped per loop, one wake-up each."""
    by_loop: dict[asyncio.AbstractEventLoop, list[Outcome]] = {}
    for job, result, error in settled:
        if job.loop is not None:
            assert isinstance(job.future, asyncio.Future)
            by_loop.setdefault(job.loop, []).append((job.future, result, error))
        else:
            _settle(job, result, error)
    for loop, outcomes in by_loop.items():
        try:
            loop.call_soon_threadsafe(_deliver, outcomes)
        except RuntimeError:  # that loop is closed: nobody is left to wait
            pass


def _settle(job: _Job, result: Any = None, error: BaseException | None = None) -> None:
    """Hand the outcome to a waiting thread, or a posted write's error to its handler."""
    future = job.future
    if future is None:
        if error is not None and job.on_error is not None:
            try:
                job.on_error(error)
            except Exception:  # an error handler must not stop the writer
                log.exception("a write's error handler failed")
        return
    assert isinstance(future, concurrent.futures.Future)
    if future.done():
        return
    try:
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)
    except concurrent.futures.InvalidStateError:  # cancelled meanwhile
        pass


class WriteWorker:
    """One thread that runs the queued writes of one connection, in batches."""

    def __init__(
        self,
        connection: Callable[[], sqlite3.Connection],
        lock: threading.Lock,
        *,
        max_batch: int = 512,
        name: str = "tokenrelay sqlite writer",
    ) -> None:
        self._connection = connection
        self._lock = lock
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._closing = False
        self._posted = 0  # posted writes: counted by the queuing thread
        self._posted_done = 0  # ... and by the writer thread once run
        #: transactions committed or rolled back (batches, and writes retried alone)
        self.transactions = 0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # -- the queuing side

    def submit(self, fn: Callable[[sqlite3.Connection], T]) -> concurrent.futures.Future[T]:
        """Queue `fn`; the future holds its result once committed (or its exception)."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._put(_Job(fn, future, None))
        return future

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Queue `fn` and wait until it has committed; its result, or its exception."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._put(_Job(fn, future, None, loop))
        return await future

    def post(self, fn: Write, on_error: OnError | None = None) -> None:
        """Queue `fn` without waiting for it; `on_error` gets its exception, if any."""
        self._put(_Job(fn, None, on_error))
        self._posted += 1

    async def settled(self) -> None:
        """Wait until every write posted so far has run, committed or failed (reads after
        checkpoints see them). Never raises for the writes' failures."""
        if self._posted != self._posted_done:
            loop = asyncio.get_running_loop()
            future: asyncio.Future[None] = loop.create_future()
            self._put(_Job(None, future, None, loop))
            await future

    def close(self) -> None:
        """Run what is queued, then stop the thread (blocks; call it in a worker thread).
        Calling it again does nothing."""
        if not self._closing:
            self._closing = True
            self._queue.put(None)
        self._thread.join()

    def _put(self, job: _Job) -> None:
        if self._closing:
            raise RuntimeError("the session store is closed")
        self._queue.put(job)

    # -- the writer thread

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, stop = [first], False
            while len(batch) < self.max_batch:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stop = True
                    break
                batch.append(job)
            writes = [job for job in batch if job.fn is not None]
            settled = self._run_batch(writes) if writes else []
            settled += [(job, None, None) for job in batch if job.fn is None]
            _settle_all(settled)
            self._posted_done += sum(1 for job in batch if job.future is None)
            if stop:
                return

    def _run_batch(self, batch: list[_Job]) -> list[tuple[_Job, Any, BaseException | None]]:
        outcomes: list[tuple[_Job, Any, BaseException | None]] = []
        with self._lock:
            try:
                conn = self._connection()
                results = self._transaction(conn, [job.fn for job in batch if job.fn is not None])
                outcomes = [(job, result, None) for job, result in zip(batch, results, strict=True)]
            except Exception as exc:
                # one bad write must not lose the others: each alone, in order
                alone = len(batch) == 1
                outcomes = [(batch[0], None, exc)] if alone else [self._alone(job) for job in batch]
        return outcomes

    def _alone(self, job: _Job) -> tuple[_Job, Any, BaseException | None]:
        try:
            assert job.fn is not None
            [result] = self._transaction(self._connection(), [job.fn])
        except Exception as exc:
            return job, None, exc
        return job, result, None

    def _transaction(self, conn: sqlite3.Connection, fns: list[Write]) -> list[Any]:
        self.transactions += 1
        conn.execute("BEGIN IMMEDIATE")
        try:
            results = [fn(conn) for fn in fns]
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return results
