"""Final turn writes that survive a storage outage.

When the database is away (PostgreSQL restarting, a disk full under SQLite) a run still ends
and its client still gets its last event; what must not be lost is the turn's answer. A write
that fails with `StorageError` is kept here and retried in the background with exponential
backoff (0.5 s doubling, capped at 30 s) until it lands or `give_up_s` passes; then it is
logged as lost. At most `max_pending` writes wait (the oldest goes first). Closing the store
tries each one last time.

A turn whose final write is pending reads as `running` meanwhile: the memory window skips it,
and a restart's `recover_running` marks it interrupted with its last checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable

from tokenrelay.errors import StorageError

__all__ = ["DeferredWrites"]

log = logging.getLogger("tokenrelay.memory")

Write = Callable[[], Awaitable[None]]


class DeferredWrites:
    def __init__(self, *, give_up_s: float = 600.0, max_pending: int = 10_000) -> None:
        self.give_up_s = give_up_s
        self.max_pending = max_pending
        self._pending: OrderedDict[Hashable, tuple[float, Write]] = OrderedDict()
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._pending)

    async def write(self, key: Hashable, write: Write) -> None:
        """Run `write`; if the storage is unavailable, keep it and retry later (a later
        write with the same key replaces it)."""
        try:
            await write()
        except StorageError as exc:
            log.warning("storage unavailable (%s); will retry the write %s", exc, key)
            self._pending[key] = (time.monotonic(), write)
            self._pending.move_to_end(key)
            while len(self._pending) > self.max_pending:
                lost, _ = self._pending.popitem(last=False)
                log.error("too many writes waiting for the storage; dropped %s", lost)
            if self._task is None or self._task.done():
                self._task = asyncio.create_task(self._retry(), name="tokenrelay deferred writes")
        else:
            self._pending.pop(key, None)

    async def flush(self) -> int:
        """Try every waiting write once; return how many still wait."""
        for key, (since, write) in list(self._pending.items()):
            try:
                await write()
            except StorageError as exc:
                if time.monotonic() - since > self.give_up_s:
                    log.error("gave up writing %s after %.0f s: %s", key, self.give_up_s, exc)
                    self._pending.pop(key, None)
                else:
                    break  # still away: the rest would fail the same way
            else:
                self._pending.pop(key, None)
        return len(self._pending)

    async def _retry(self) -> None:
        failures = 0
        while self._pending:
            await asyncio.sleep(min(30.0, 0.5 * 2 ** min(failures, 10)))
            before = len(self._pending)
            left = await self.flush()
            failures = 0 if left < before else failures + 1

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._pending and await self.flush():
            log.error("the store closed with %d turn writes it could not make", len(self._pending))
