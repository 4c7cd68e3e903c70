"""Several workers, one service: run event logs in Redis Streams, cancel over pub/sub, and
worker liveness by heartbeat keys. Used only when a Redis URL is configured.

Keys (prefix `tokenrelay:` by default):

* `run:{id}`: a stream with one entry per event, entry id `{index + 1}-0` — so the SSE
  `id:` (the event's index) maps to a stream id and `Last-Event-ID: n` resumes at `n+1-0`.
  It expires `retention_s` after the run ends; the final answer stays in the database.
* `runinfo:{id}`: a hash (owner, worker, session) for ownership checks on other workers.
* `worker:{id}`: exists while the worker is alive (refreshed every `heartbeat_s`, expires
  after `lease_s`).
* `active`: a hash run id → worker id of runs in flight, swept for runs of dead workers.

Writes go through one batching writer per worker (one pipeline round trip per batch for all
its runs); blocking reads use a separate connection pool so readers never starve writers.
* `cancel`: the pub/sub channel that carries run ids to cancel.

Invariants: the owning worker appends events in order, in batches (one pipeline round trip
per batch, not per token); an entry id can be written once, so when a dead worker's run is
closed by two survivors at once only one error event lands; a reader on another worker sees
every event after its start index exactly once, then the terminal event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, cast

from tokenrelay.errors import ConfigError
from tokenrelay.events import Event, RunError, RunFinished, event_from_dict, event_to_dict
from tokenrelay.server.runs import RunChannel

__all__ = ["RedisCoordinator"]

log = logging.getLogger("tokenrelay.server")

WORKER_LOST = "the worker running this answer stopped before it finished"


class RedisCoordinator:
    def __init__(
        self,
        url: str,
        *,
        worker_id: str | None = None,
        retention_s: float = 3600.0,
        heartbeat_s: float = 1.0,
        lease_s: float = 4.0,
        prefix: str = "tokenrelay:",
    ) -> None:
        self.url = url
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.retention_s = retention_s
        self.heartbeat_s = heartbeat_s
        self.lease_s = lease_s
        self.prefix = prefix
        self._redis: Any = None
        self._reader: Any = None
        self._writer: _BatchWriter | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._on_worker_lost: Callable[[str], Awaitable[None]] | None = None

    # -- lifecycle ---------------------------------------------------------------------

    async def start(
        self,
        on_cancel: Callable[[str], bool],
        on_worker_lost: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        try:
            import redis.asyncio as aioredis
        except ImportError:
            raise ConfigError(
                "Redis coordination needs the redis extra: pip install 'tokenrelay[redis]'"
            ) from None
        # blocking pools: under load callers wait for a connection instead of failing
        self._redis = aioredis.Redis(
            connection_pool=aioredis.BlockingConnectionPool.from_url(
                self.url, max_connections=32, timeout=None
            )
        )
        # blocking XREADs of readers get their own connections, so they never starve writes
        self._reader = aioredis.Redis(
            connection_pool=aioredis.BlockingConnectionPool.from_url(
                self.url, max_connections=256, timeout=None
            )
        )
        try:
            await self._redis.ping()
        except Exception as exc:
            raise ConfigError(f"cannot connect to Redis at {_safe(self.url)}: {exc}") from None
        self._writer = _BatchWriter(self._redis)
        self._on_worker_lost = on_worker_lost
        await self._beat()
        self._tasks = [
            asyncio.create_task(self._heartbeat(), name="tokenrelay heartbeat"),
            asyncio.create_task(self._listen_cancel(on_cancel), name="tokenrelay cancel listener"),
            asyncio.create_task(self._sweep_dead(), name="tokenrelay dead-worker sweep"),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._writer is not None:
            await self._writer.close()
        if self._reader is not None:
            await self._reader.aclose()
        if self._redis is not None:
            with contextlib.suppress(Exception):
                await self._redis.delete(self._key("worker", self.worker_id))
            await self._redis.aclose()

    def _key(self, kind: str, name: str = "") -> str:
        return f"{self.prefix}{kind}:{name}" if name else f"{self.prefix}{kind}"

    async def _beat(self) -> None:
        await self._redis.set(self._key("worker", self.worker_id), b"1", px=int(self.lease_s * 1000))

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            try:
                await self._beat()
            except Exception as exc:  # keep beating: Redis may come back
                log.warning("heartbeat to Redis failed: %s", exc)

    async def worker_alive(self, worker_id: str) -> bool:
        return bool(await self._redis.exists(self._key("worker", worker_id)))

    # -- the owning side ---------------------------------------------------------------

    def replicate(self, channel: RunChannel) -> None:
        """Mirror a local run's events into its stream as they are published. Every run of
        this worker shares one writer: one pipeline round trip per batch for all runs."""
        writer = self._writer
        assert writer is not None, "start() first"
        stream = self._key("run", channel.run_id)
        info = self._key("runinfo", channel.run_id)
        retention = int(self.retention_s * 1000)
        active = self._key("active")
        run_id = channel.run_id
        writer.add("hset", info, mapping={
            "owner": channel.owner or "", "worker": self.worker_id, "session": channel.session_id or "",
        })  # fmt: skip
        writer.add("hset", active, run_id, self.worker_id)

        def sink(index: int, event: Event) -> None:
            writer.add("xadd", stream, {"e": _encode(event)}, id=f"{index + 1}-0")
            if type(event) is RunFinished or type(event) is RunError:
                writer.add("hdel", active, run_id)
                writer.add("pexpire", stream, retention)
                writer.add("pexpire", info, retention)

        for index, event in enumerate(channel.events):  # anything published before now
            sink(index, event)
        channel.sink = sink

    async def publish_cancel(self, run_id: str) -> None:
        await self._redis.publish(self._key("cancel"), run_id.encode())

    async def _listen_cancel(self, on_cancel: Callable[[str], bool]) -> None:
        while True:
            try:
                pubsub = self._redis.pubsub()
                await pubsub.subscribe(self._key("cancel"))
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        on_cancel(message["data"].decode())
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("cancel listener lost Redis (%s); retrying", exc)
                await asyncio.sleep(1.0)

    # -- the reading side --------------------------------------------------------------

    async def run_info(self, run_id: str) -> dict[str, str] | None:
        raw = await self._redis.hgetall(self._key("runinfo", run_id))
        if not raw:
            return None
        return {k.decode(): v.decode() for k, v in raw.items()}

    async def remote_channel(self, run_id: str, *, owner: str | None, start: int) -> RunChannel | None:
        """A channel fed from the run's stream, from event index `start` on; None when the
        run is unknown or belongs to another owner."""
        info = await self.run_info(run_id)
        if info is None or (info["owner"] or None) != owner:
            return None
        channel = RunChannel(run_id=run_id, owner=owner, session_id=info["session"] or None, detached=True)
        channel.events = cast(list[Event], [None] * start)  # indexes below `start` are never read
        channel.task = asyncio.create_task(self._read(channel, info["worker"], start), name=f"read {run_id}")
        return channel

    async def _read(self, channel: RunChannel, worker: str, start: int) -> None:
        stream = self._key("run", channel.run_id)
        last = f"{start}-0"
        try:
            while not channel.done:
                reply = await self._redis.xread(
                    {stream: last}, block=int(self.heartbeat_s * 1000), count=1000
                )
                if reply:
                    for entry_id, fields in reply[0][1]:
                        last = entry_id.decode()
                        channel.publish(event_from_dict(json.loads(fields[b"e"])))
                    continue
                if not await self.worker_alive(worker):
                    await self.close_dead_run(channel.run_id, last_index=int(last.split("-")[0]) - 1)
        except asyncio.CancelledError:
            pass
        except Exception as exc:
            channel.publish(RunError(message=f"lost the run's event log: {exc}", code="internal"))
        finally:
            if not channel.done:
                channel.publish(RunError(message="stopped following the run", code="cancelled"))

    async def close_dead_run(self, run_id: str, *, last_index: int) -> None:
        """Append the terminal error event for a run whose worker died (once, whoever wins)."""
        stream = self._key("run", run_id)
        error = RunError(message=WORKER_LOST, code="worker_lost")
        with contextlib.suppress(Exception):  # another survivor already wrote it: fine
            await self._redis.xadd(stream, {"e": _encode(error)}, id=f"{last_index + 2}-0")
        await self._redis.hdel(self._key("active"), run_id)
        await self._redis.pexpire(stream, int(self.retention_s * 1000))
        if self._on_worker_lost is not None:
            await self._on_worker_lost(run_id)

    async def _sweep_dead(self) -> None:
        """Close runs whose worker is gone, so readers get an error instead of waiting."""
        while True:
            await asyncio.sleep(self.lease_s)
            try:
                active = await self._redis.hgetall(self._key("active"))
                for run_id_b, worker_b in active.items():
                    worker = worker_b.decode()
                    if worker == self.worker_id or await self.worker_alive(worker):
                        continue
                    run_id = run_id_b.decode()
                    last = await self._redis.xrevrange(self._key("run", run_id), count=1)
                    last_index = int(last[0][0].decode().split("-")[0]) - 1 if last else -1
                    if last and _is_terminal(last[0][1]):
                        await self._redis.hdel(self._key("active"), run_id)
                        continue
                    log.warning("worker %s died during run %s; closing it", worker, run_id)
                    await self.close_dead_run(run_id, last_index=last_index)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("dead-worker sweep failed: %s", exc)


class _BatchWriter:
    """One task that sends every queued Redis command in one pipeline; while a pipeline is in
    flight the next batch accumulates. A failed batch is retried (entries already written are
    refused by their ids, so a retry never duplicates an event)."""

    def __init__(self, redis: Any) -> None:
        self._redis = redis
        self._ops: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="tokenrelay redis writer")

    def add(self, name: str, *args: Any, **kwargs: Any) -> None:
        self._ops.append((name, args, kwargs))
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            ops, self._ops = self._ops, []
            pipe = self._redis.pipeline(transaction=False)
            for name, args, kwargs in ops:
                getattr(pipe, name)(*args, **kwargs)
            try:
                await pipe.execute(raise_on_error=False)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("writing run logs to Redis failed (%s); retrying", exc)
                self._ops = ops + self._ops
                await asyncio.sleep(0.5)
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


def _encode(event: Event) -> bytes:
    return json.dumps(event_to_dict(event), ensure_ascii=False, separators=(",", ":")).encode()


def _is_terminal(fields: dict[bytes, bytes]) -> bool:
    kind = json.loads(fields[b"e"]).get("type")
    return kind in ("run_finished", "error")


def _safe(url: str) -> str:
    """A URL without its password, for messages."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.rsplit('@', 1)[1]}"
    return url
