"""The partial answers of running turns (checkpoints), coalesced and written together.

A checkpoint costs the streaming path a dict assignment: the latest answer of each turn waits
in a dict for up to `CHECKPOINT_BATCH_S`, then one write queued to the store's writer thread
stores all of them (`executemany`, one commit), so a thousand streams checkpointing every
second cost a few commits a second, not a thousand.

Invariants:

* A checkpoint is best effort: a failure is logged and skipped, the run goes on.
* It only touches a turn still `running`, so one landing after writes queued before it (a
  final write, `recover_running`) changes nothing; whoever needs the waiting ones first (a
  read of running turns, `recover_running`, closing) calls `queue()`.
* The dict is shared with the writer thread under a lock; the timer lives on the event loop
  of the first checkpoint of a batch.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading

from tokenrelay.memory.sqlite.worker import WriteWorker

__all__ = ["CHECKPOINT_BATCH_S", "Checkpoints"]

log = logging.getLogger("tokenrelay.memory")

#: how long a checkpoint waits for others to share its commit (a kill loses this much more)
CHECKPOINT_BATCH_S = 0.25


class Checkpoints:
    """The waiting checkpoints of one SQLite store, written through its `writer`."""

    def __init__(self, writer: WriteWorker) -> None:
        self._writer = writer
        self._lock = threading.Lock()
        self._waiting: dict[int, str] = {}  # turn id -> latest partial answer, not yet written
        self._timer: asyncio.TimerHandle | None = None  # when the waiting ones are queued

    def put(self, turn_id: int, answer: str) -> None:
        """Keep `answer` as the turn's checkpoint; it is queued within `CHECKPOINT_BATCH_S`."""
        with self._lock:
            first = not self._waiting
            self._waiting[turn_id] = answer
        if first and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(CHECKPOINT_BATCH_S, self.queue)

    def queue(self) -> None:
        """Queue the write of the waiting checkpoints now."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._waiting:
            self._post()

    def _post(self) -> None:
        """Queue one write that stores the checkpoints waiting when it runs (the same ones
        again if the writer retries it alone)."""
        taken: dict[int, str] | None = None

        def write(conn: sqlite3.Connection) -> None:
            nonlocal taken
            if taken is None:
                with self._lock:
                    taken, self._waiting = self._waiting, {}
            conn.executemany(
                "UPDATE turns SET answer = ? WHERE id = ? AND status = 'running'",
                [(answer, turn_id) for turn_id, answer in taken.items()],
            )

        def failed(exc: BaseException) -> None:
            nonlocal taken
            if taken is None:  # the transaction failed before this write ran: drop them
                with self._lock:
                    taken, self._waiting = self._waiting, {}
            turns = sorted(taken)
            log.warning("checkpoint of turns %s failed: %s", turns[:10], exc)

        self._writer.post(write, failed)
