"""The pieces of the Redis run logs that do not talk to the coordinator: the batching writer
(one pipeline round trip per batch for all of a worker's runs, bounded through an outage), the
offset event list of a remote reader, and the backoff every Redis loop uses."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any, overload

from tokenrelay.events import Event

__all__ = ["BatchWriter", "OffsetEvents", "backoff"]

log = logging.getLogger("tokenrelay.server")

_Op = tuple[str, tuple[Any, ...], dict[str, Any], bool]


class BatchWriter:
    """One task that sends every queued Redis command in one pipeline; while a pipeline is in
    flight the next batch accumulates. A failed batch is retried with exponential backoff
    (entries already written are refused by their ids, so a retry never duplicates an event);
    after `max_attempts` failures, or while more than `max_queued` ops wait, the ops that are
    not essential (events before a run's last) are dropped: memory stays bounded however long
    Redis is away, and readers see the hole and end with an error."""

    def __init__(self, redis: Any, *, max_attempts: int = 6, max_queued: int = 100_000) -> None:
        self._redis = redis
        self.max_attempts = max_attempts
        self.max_queued = max_queued
        self._ops: list[_Op] = []
        self._wake = asyncio.Event()
        #: ops dropped since start (for logs and tests)
        self.dropped = 0
        self._task = asyncio.create_task(self._run(), name="tokenrelay redis writer")

    def add(self, name: str, *args: Any, **kwargs: Any) -> None:
        self._ops.append((name, args, kwargs, False))
        self._wake.set()

    def add_essential(self, name: str, *args: Any, **kwargs: Any) -> None:
        """An op that is kept through an outage (it ends a run)."""
        self._ops.append((name, args, kwargs, True))
        self._wake.set()

    async def _run(self) -> None:
        failures = 0
        while True:
            await self._wake.wait()
            self._wake.clear()
            ops, self._ops = self._ops, []
            pipe = self._redis.pipeline(transaction=False)
            for name, args, kwargs, _ in ops:
                getattr(pipe, name)(*args, **kwargs)
            try:
                await pipe.execute(raise_on_error=False)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                queued = ops + self._ops
                if failures >= self.max_attempts or len(queued) > self.max_queued:
                    kept = [op for op in queued if op[3]]
                    self.dropped += len(queued) - len(kept)
                    log.error(
                        "writing run logs to Redis failed %d times (%s); dropped %d events, kept %d ops "
                        "that end runs",
                        failures,
                        exc,
                        len(queued) - len(kept),
                        len(kept),
                    )
                    queued = kept
                else:
                    log.warning("writing run logs to Redis failed (%s); retrying", exc)
                self._ops = queued
                await asyncio.sleep(backoff(failures))
                self._wake.set()

    async def close(self) -> None:
        """Flush what is queued (best effort), then stop."""
        for _ in range(20):
            if not self._ops:
                break
            await asyncio.sleep(0.05)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class OffsetEvents(Sequence[Event]):
    """A remote channel's events from index `offset` on: what a follower reads by index,
    without a placeholder for each event before `offset` (any Last-Event-ID costs O(1))."""

    __slots__ = ("_items", "offset")

    def __init__(self, offset: int) -> None:
        self.offset = offset
        self._items: list[Event] = []

    def append(self, event: Event) -> None:
        self._items.append(event)

    def __len__(self) -> int:
        return self.offset + len(self._items)

    @overload
    def __getitem__(self, index: int) -> Event: ...
    @overload
    def __getitem__(self, index: slice) -> list[Event]: ...
    def __getitem__(self, index: int | slice) -> Event | list[Event]:
        if isinstance(index, slice):
            start = index.start or 0
            if start < self.offset or index.step not in (None, 1):
                raise IndexError("events before the resume point are not held")
            stop = None if index.stop is None else index.stop - self.offset
            return self._items[start - self.offset : stop]
        if index < 0:
            return self._items[index]
        if index < self.offset:
            raise IndexError("events before the resume point are not held")
        return self._items[index - self.offset]

    def __iter__(self) -> Iterator[Event]:
        return iter(self._items)


def backoff(failures: int) -> float:
    """Seconds to wait after `failures` failures in a row: 0.1 s doubling, capped at 5 s."""
    return float(min(5.0, 0.1 * 2 ** min(failures, 16)))
