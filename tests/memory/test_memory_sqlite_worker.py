"""The SQLite store's writer thread (memory/sqlite/worker.py): queued writes, batched into
one transaction, in order, one bad write never losing the others, errors reaching whoever
waits, and `close()` flushing the queue."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tokenrelay.memory import SQLiteSessionStore
from tokenrelay.memory.sqlite.checkpoints import CHECKPOINT_BATCH_S
from tokenrelay.memory.sqlite.worker import DELIVER_PER_TURN, WriteWorker, _deliver


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    c = sqlite3.connect(tmp_path / "w.db", isolation_level=None, check_same_thread=False)
    c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL UNIQUE)")
    yield c
    c.close()


def _insert(v: str) -> Callable[[sqlite3.Connection], int]:
    def fn(c: sqlite3.Connection) -> int:
        return int(c.execute("INSERT INTO t (v) VALUES (?)", (v,)).lastrowid or 0)

    return fn


def _values(c: sqlite3.Connection) -> list[str]:
    return [row[0] for row in c.execute("SELECT v FROM t ORDER BY id")]


def test_waiting_writes_are_committed_in_one_transaction(conn: sqlite3.Connection) -> None:
    lock = threading.Lock()
    worker = WriteWorker(lambda: conn, lock)
    with lock:  # the writer takes the first write, then waits for the connection
        first = worker.submit(_insert("first"))
        rest = [worker.submit(_insert(f"v{i}")) for i in range(100)]
    assert [f.result(5) for f in rest] == list(range(2, 102)) and first.result(5) == 1
    # one transaction for `first` (taken before the rest were queued) and one or two for the rest
    assert worker.transactions <= 3
    worker.close()
    assert len(_values(conn)) == 101


@pytest.mark.anyio
async def test_a_batch_of_awaited_writes_wakes_the_loop_once(conn: sqlite3.Connection) -> None:
    """A hundred streams' writes in one batch: their results come back in one loop wake-up,
    each to its own waiter, a failing one's error to its waiter only."""
    loop = asyncio.get_running_loop()
    wakeups: list[object] = []
    real = loop.call_soon_threadsafe

    def counting(callback: Callable[..., object], *args: object, **kw: object) -> asyncio.Handle:
        wakeups.append(callback)
        return real(callback, *args, **kw)  # type: ignore[arg-type]

    lock = threading.Lock()
    worker = WriteWorker(lambda: conn, lock)
    loop.call_soon_threadsafe = counting  # type: ignore[method-assign]
    try:
        with lock:
            worker.submit(lambda c: None)  # occupies the writer until the lock is free
            tasks = [asyncio.ensure_future(worker.write(_insert(f"v{i}"))) for i in range(100)]
            duplicate = asyncio.ensure_future(worker.write(_insert("v0")))
            await asyncio.sleep(0.05)  # every write is queued
        ids = await asyncio.gather(*tasks)
        with pytest.raises(sqlite3.IntegrityError):
            await duplicate
    finally:
        del loop.call_soon_threadsafe
    assert ids == list(range(1, 101))
    assert len(wakeups) == 1, wakeups
    await asyncio.to_thread(worker.close)


@pytest.mark.anyio
async def test_a_large_batch_resumes_its_waiters_a_few_per_loop_turn() -> None:
    """The results of a batch that finished a hundred runs' turns go back DELIVER_PER_TURN per
    loop turn, in order, so the streams still running are not held up by all of that at once."""
    loop = asyncio.get_running_loop()
    futures: list[asyncio.Future[object]] = [loop.create_future() for _ in range(2 * DELIVER_PER_TURN + 3)]
    futures[1].cancel()  # a waiter that left: skipped, still counted in its turn
    _deliver([(f, i, None) for i, f in enumerate(futures)])
    done_per_turn = [sum(f.done() for f in futures)]
    for _ in range(5):  # (bounded: a regression fails here instead of hanging)
        if done_per_turn[-1] == len(futures):
            break
        await asyncio.sleep(0)  # one loop turn
        done_per_turn.append(sum(f.done() for f in futures))
    assert done_per_turn == [DELIVER_PER_TURN, 2 * DELIVER_PER_TURN, len(futures)]
    assert [f.result() for f in futures if not f.cancelled()] == [i for i in range(len(futures)) if i != 1]


def test_writes_commit_in_queue_order_and_see_earlier_ones(conn: sqlite3.Connection) -> None:
    worker = WriteWorker(lambda: conn, threading.Lock())
    for i in range(50):
        worker.post(_insert(f"v{i}"))
    seen = worker.submit(lambda c: c.execute("SELECT count(*) FROM t").fetchone()[0])
    assert seen.result(5) == 50
    worker.close()
    assert _values(conn) == [f"v{i}" for i in range(50)]


def test_one_bad_write_does_not_lose_the_others(conn: sqlite3.Connection) -> None:
    lock = threading.Lock()
    worker = WriteWorker(lambda: conn, lock)
    with lock:
        worker.submit(lambda c: None)  # occupies the writer until the lock is free
        good1 = worker.submit(_insert("a"))
        bad = worker.submit(_insert("a"))  # a UNIQUE violation
        good2 = worker.submit(_insert("b"))
    assert good1.result(5) and good2.result(5)
    with pytest.raises(sqlite3.IntegrityError):
        bad.result(5)
    worker.close()
    assert _values(conn) == ["a", "b"]


def test_a_failed_write_is_rolled_back_whole(conn: sqlite3.Connection) -> None:
    worker = WriteWorker(lambda: conn, threading.Lock())

    def half(c: sqlite3.Connection) -> None:
        c.execute("INSERT INTO t (v) VALUES ('half')")
        raise KeyError("missing")

    with pytest.raises(KeyError):
        worker.submit(half).result(5)
    worker.close()
    assert _values(conn) == []


def test_errors_reach_the_waiter_or_the_error_handler(conn: sqlite3.Connection) -> None:
    worker = WriteWorker(lambda: conn, threading.Lock())
    errors: list[BaseException] = []
    worker.submit(_insert("x")).result(5)
    worker.post(_insert("x"), errors.append)

    async def awaited() -> None:
        await worker.write(_insert("x"))

    with pytest.raises(sqlite3.IntegrityError):
        asyncio.run(awaited())
    worker.close()
    assert len(errors) == 1 and isinstance(errors[0], sqlite3.IntegrityError)


def test_close_runs_what_is_queued_then_refuses(conn: sqlite3.Connection) -> None:
    lock = threading.Lock()
    worker = WriteWorker(lambda: conn, lock)
    with lock:
        for i in range(20):
            worker.post(_insert(f"v{i}"))
        closing = threading.Thread(target=worker.close)
        closing.start()
    closing.join(5)
    assert not closing.is_alive()
    assert len(_values(conn)) == 20
    with pytest.raises(RuntimeError, match="closed"):
        worker.post(_insert("late"))
    worker.close()  # again: nothing


@pytest.mark.anyio
async def test_checkpoints_do_not_wait_for_the_disk_and_reads_see_them(tmp_path: Path) -> None:
    store = SQLiteSessionStore(tmp_path / "s.db")
    try:
        s = await store.create_session()
        turn_id = await store.begin_turn(s.id, run_id="r", user_text="q")
        store._lock.acquire()  # the disk is "busy": the writer thread cannot commit
        try:
            for n in range(1, 11):  # each checkpoint returns at once
                await asyncio.wait_for(store.update_partial(turn_id, "x" * n), 0.5)
            task = asyncio.create_task(store.history(s.id))
            await asyncio.sleep(0.05)
            assert not task.done()  # a read waits for the checkpoints queued before it
        finally:
            store._lock.release()
        [turn] = await asyncio.wait_for(task, 5)
        assert (turn.status, turn.answer) == ("running", "x" * 10)
    finally:
        await store.close()


@pytest.mark.anyio
async def test_batched_store_writes_fail_alone(tmp_path: Path) -> None:
    store = SQLiteSessionStore(tmp_path / "s.db")
    try:
        store._lock.acquire()
        try:
            tasks = [
                asyncio.create_task(store.create_session(session_id=sid)) for sid in ("s_a", "s_a", "s_b")
            ]
            await asyncio.sleep(0.05)
        finally:
            store._lock.release()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert [type(r).__name__ for r in results] == ["SessionInfo", "ValueError", "SessionInfo"]
        assert {i.id for i in await store.list_sessions()} == {"s_a", "s_b"}
    finally:
        await store.close()


@pytest.mark.anyio
async def test_a_failed_checkpoint_is_logged_and_the_next_one_lands(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = SQLiteSessionStore(tmp_path / "s.db")
    try:
        s = await store.create_session()
        turn_id = await store.begin_turn(s.id, run_id="r", user_text="q")
        store._read_sync(lambda conn: conn.execute("PRAGMA query_only = ON"))  # writes now fail
        with caplog.at_level("WARNING", logger="tokenrelay.memory"):
            await store.update_partial(turn_id, "lost")  # no exception: best effort
            await asyncio.sleep(CHECKPOINT_BATCH_S + 0.1)  # queued once its batch time is up
            await store._writer.settled()
        assert f"checkpoint of turns [{turn_id}] failed" in caplog.text
        store._read_sync(lambda conn: conn.execute("PRAGMA query_only = OFF"))
        for n in range(3):  # coalesced: the latest answer of the turn is what lands
            await store.update_partial(turn_id, f"partial {n}")
        [turn] = await store.history(s.id)
        assert (turn.status, turn.answer) == ("running", "partial 2")
    finally:
        await store.close()


@pytest.mark.anyio
async def test_the_checkpoints_of_many_streams_share_one_commit(tmp_path: Path) -> None:
    store = SQLiteSessionStore(tmp_path / "s.db")
    try:
        s = await store.create_session()
        turns = [await store.begin_turn(s.id, run_id=f"r{n}", user_text="q") for n in range(20)]
        before = store._writer.transactions
        for n, turn_id in enumerate(turns):  # twenty streams' checkpoints within one batch time
            await store.update_partial(turn_id, f"partial {n}")
        await asyncio.sleep(CHECKPOINT_BATCH_S + 0.1)
        await store._writer.settled()
        assert store._writer.transactions == before + 1
        history = await store.history(s.id)
        assert [t.answer for t in history] == [f"partial {n}" for n in range(20)]
    finally:
        await store.close()
