"""The pieces of the Redis run logs that do not talk to the coordinator: the batching writer
(one pipeline round trip per batch for all of a worker's runs, bounded through an outage), the
wire form of a logged event, the per-key run claim script, and the backoff every Redis loop uses."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from tokenrelay.events import Event, event_to_dict

__all__ = ["CLAIM_RUN", "BatchWriter", "backoff", "encode_event", "is_terminal_entry"]

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


def backoff(failures: int) -> float:
    """Seconds to wait after `failures` failures in a row: 0.1 s doubling, capped at 5 s."""
    return float(min(5.0, 0.1 * 2 ** min(failures, 16)))


def encode_event(event: Event) -> bytes:
    """An event as a stream entry's `e` field (compact JSON, UTF-8)."""
    return json.dumps(event_to_dict(event), ensure_ascii=False, separators=(",", ":")).encode()


def is_terminal_entry(fields: dict[bytes, bytes]) -> bool:
    kind = json.loads(fields[b"e"]).get("type")
    return kind in ("run_finished", "error")


#: add a run to a key's runs in flight unless it has `limit` (entries of dead workers dropped)
CLAIM_RUN = """
local entries = redis.call('HGETALL', KEYS[1])
local n = 0
for i = 1, #entries, 2 do
  if redis.call('EXISTS', ARGV[4] .. entries[i + 1]) == 1 then
    n = n + 1
  else
    redis.call('HDEL', KEYS[1], entries[i])
  end
end
if n >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
return 1
"""
