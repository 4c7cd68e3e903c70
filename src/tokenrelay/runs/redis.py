"""Several workers, one service: run event logs in Redis Streams, cancel over pub/sub, and
worker liveness by heartbeat keys. Used only when a Redis URL is configured.

Keys (prefix `tokenrelay:` by default):

* `run:{id}`: a stream with one entry per event, entry id `{index + 1}-0` — so the SSE
  `id:` (the event's index) maps to a stream id and `Last-Event-ID: n` resumes at `n+1-0`.
  It expires `retention_s` after the run ends; the final answer stays in the database.
* `runinfo:{id}`: a hash (owner, worker, session) for ownership checks on other workers;
  `worker:{id}`: exists while the worker is alive (refreshed every `heartbeat_s`, expires after
  `lease_s`); `active`: a hash run id → worker id of runs in flight (swept).
* pub/sub `cancel`: run ids to cancel; `following`: runs followed through a worker that does
  not own them (each `heartbeat_s`: the owners batch every `batch_interval_s`, not `idle_...`).
* `runs:{owner}`, `rl:{owner}:{minute}`: per-key runs in flight and requests per minute, for
  the per-key limits (server/quotas.py; the claim script is in runs/redis_log.py).

Connections: writes go through one batching writer per worker (one script call per batch for
all its runs) on a connection of its own; blocking reads (XREAD) use a separate pool, so
readers never starve writers; the heartbeat has a connection of its own, so nothing a client
does can make the worker's lease lapse while it is alive.

Failures: every loop that talks to Redis retries with exponential backoff and a cap; the
writer gives up on a batch after a few attempts and then keeps only the ops that end runs
(terminal events, `active` clean-up), so a long outage costs bounded memory. A reader that
finds a hole in a run's log (events dropped during an outage) ends with an error, never waits.

Invariants: the owning worker appends events in order, in batches (runs/redis_log.py: one
call per batch, never a round trip per token, nor an await on the streaming path); an entry id
is written once, so when two survivors close a dead worker's run only one error event lands; a
reader on another worker sees every event after its start index exactly once, then the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from tokenrelay._redact import redact_url
from tokenrelay.errors import ConfigError
from tokenrelay.events import Event, RunError, RunFinished, event_from_dict
from tokenrelay.runs.buffers import OffsetEvents
from tokenrelay.runs.channel import RunChannel
from tokenrelay.runs.redis_log import (
    APPLY_OPS,
    CLAIM_RUN,
    BatchWriter,
    backoff,
    encode_event,
    is_terminal_entry,
    log_sink,
    pack_batch,
)

__all__ = ["EventIdPastEnd", "RedisCoordinator"]

log = logging.getLogger("tokenrelay.server")

WORKER_LOST = "the worker running this answer stopped before it finished"
LOG_GAP = "the run's event log lost events while Redis was unreachable"
#: how long a reader waits for a run that is still going to reach a Last-Event-ID past its
#: end (the owner's writes lag by one batch) before answering like the owner: 422
PAST_END_WAIT_S = 1.0


class EventIdPastEnd(Exception):
    """A Last-Event-ID beyond the run's last event (the owning worker answers 422 too)."""


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
        batch_interval_s: float = 0.025,
        idle_batch_interval_s: float = 0.1,
    ) -> None:
        """`batch_interval_s` / `idle_batch_interval_s`: the writer's batch interval while a client
        follows a run through another worker / otherwise (a batch's cost is mostly fixed)."""
        self.url = url
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.retention_s = retention_s
        self.heartbeat_s = heartbeat_s
        self.lease_s = lease_s
        self.prefix = prefix
        self.batch_interval_s = batch_interval_s
        self.idle_batch_interval_s = idle_batch_interval_s
        self._redis: Any = None
        self._reader: Any = None
        self._beat_client: Any = None
        self._writer: BatchWriter | None = None
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

        def client(max_connections: int, **options: Any) -> Any:
            pool = aioredis.BlockingConnectionPool.from_url(
                self.url, max_connections=max_connections, timeout=None, **options
            )
            return aioredis.Redis(connection_pool=pool)

        # blocking pools: under load callers wait for a connection instead of failing
        self._redis = client(32)
        # blocking XREADs of readers get their own connections, so they never starve writes
        self._reader = client(256)
        # the heartbeat's own connection: a lapse would make the other workers close our runs
        self._beat_client = client(1, socket_timeout=self.lease_s)
        problem = "cannot connect to Redis at {url}"
        try:
            await self._redis.ping()
            problem = "Redis at {url} cannot run the run-log script (EVAL with Lua's cmsgpack)"
            await self._redis.eval(APPLY_OPS, 0, pack_batch([]))  # find out now, not per batch
        except Exception as exc:
            await self._close_clients()
            raise ConfigError(f"{problem.format(url=redact_url(self.url))}: {exc}") from None
        self._writer = BatchWriter(
            self._redis, min_interval_s=self.batch_interval_s, idle_interval_s=self.idle_batch_interval_s
        )
        self._on_worker_lost = on_worker_lost
        await self._beat()
        self._tasks = [
            asyncio.create_task(self._heartbeat(), name="tokenrelay heartbeat"),
            asyncio.create_task(self._listen(on_cancel), name="tokenrelay pub/sub listener"),
            asyncio.create_task(self._sweep_dead(), name="tokenrelay dead-worker sweep"),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._writer is not None:
            await self._writer.close()
        if self._redis is not None:
            with contextlib.suppress(Exception):
                await self._redis.delete(self._key("worker", self.worker_id))
        await self._close_clients()

    async def _close_clients(self) -> None:
        for client in (self._reader, self._beat_client, self._redis):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.aclose()
                # a client given its pool does not close it: disconnect every connection
                with contextlib.suppress(Exception):
                    await client.connection_pool.disconnect()

    def _key(self, kind: str, name: str = "") -> str:
        return f"{self.prefix}{kind}:{name}" if name else f"{self.prefix}{kind}"

    async def _beat(self) -> None:
        await self._beat_client.set(self._key("worker", self.worker_id), b"1", px=int(self.lease_s * 1000))

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
        this worker shares one writer: one script call per batch for all runs."""
        writer = self._writer
        assert writer is not None, "start() first"
        run_id, owner = channel.run_id, channel.owner
        info = self._key("runinfo", run_id)
        # the registration goes at once, not after the batch interval: a client may ask another
        # worker about the run as soon as it has its id
        writer.add(
            "HSET", info, "owner", owner or "", "worker", self.worker_id, "session", channel.session_id or ""
        )
        writer.add("HSET", self._key("active"), run_id, self.worker_id, prompt=True)
        ends: list[tuple[str, str, str | int]] = [("HDEL", self._key("active"), run_id)]
        if owner is not None:
            ends.append(("HDEL", self._key("runs", owner), run_id))
        retention = int(self.retention_s * 1000)
        stream = self._key("run", run_id)
        ends += [("PEXPIRE", stream, retention), ("PEXPIRE", info, retention)]
        # anything published before now, then each event as it comes
        channel.replicate(log_sink(writer, stream, ends))

    async def publish_cancel(self, run_id: str) -> None:
        await self._redis.publish(self._key("cancel"), run_id.encode())

    async def _listen(self, on_cancel: Callable[[str], bool]) -> None:
        """Follow the cancel and following channels for the worker's life. While Redis is away, reconnect
        with exponential backoff (0.1 s doubling, capped at 5 s); a working subscription
        resets the backoff."""
        failures = 0
        while True:
            pubsub = self._redis.pubsub()
            try:
                cancel, following = self._key("cancel").encode(), self._key("following").encode()
                await pubsub.subscribe(cancel, following)
                failures = 0
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    if message["channel"] == cancel:
                        on_cancel(message["data"].decode())
                    elif self._writer is not None:  # someone follows a run elsewhere: batch often
                        self._writer.hurry(self.heartbeat_s * 2.5)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                delay = backoff(failures)
                log.warning("pub/sub listener lost Redis (%s); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    # -- per-key limits (server/quotas.py) ----------------------------------------------

    async def count_request(self, owner: str, minute: int) -> int:
        """Count one request of `owner` in `minute`; the count so far (all workers)."""
        key = self._key("rl", f"{owner}:{minute}")
        pipe = self._redis.pipeline(transaction=False)
        pipe.incr(key)
        pipe.expire(key, 120)
        count, _ = await pipe.execute()
        return int(count)

    async def claim_run(self, owner: str, run_id: str, limit: int) -> bool:
        """Add `run_id` to `owner`'s runs in flight unless it has `limit` already (entries of
        dead workers do not count and are dropped); True when added."""
        added = await self._redis.eval(
            CLAIM_RUN, 1, self._key("runs", owner), limit, run_id, self.worker_id, f"{self.prefix}worker:"
        )
        return bool(added)

    async def release_run(self, owner: str, run_id: str) -> None:
        await self._redis.hdel(self._key("runs", owner), run_id)

    # -- the reading side --------------------------------------------------------------

    async def run_info(self, run_id: str) -> dict[str, str] | None:
        raw = await self._redis.hgetall(self._key("runinfo", run_id))
        if not raw:
            return None
        return {k.decode(): v.decode() for k, v in raw.items()}

    async def remote_channel(self, run_id: str, *, owner: str | None, start: int) -> RunChannel | None:
        """A channel fed from the run's stream, from event index `start` on; None when the
        run is unknown or belongs to another owner. Answers like the owning worker at the
        edges: `start` just past a finished run's last event gives a channel that is already
        done (an empty stream); further than that raises `EventIdPastEnd` (unless the owner died: it
        may have sent events it never logged; then `worker_lost`). Any `start` costs O(1) memory."""
        info = await self.run_info(run_id)
        if info is None or (info["owner"] or None) != owner:
            return None
        end, terminal = await self._tail(run_id)
        # An id past the log of a run still going: the owner's last batch may be on its way (wait
        # up to PAST_END_WAIT_S), or the owner died before logging what its client saw (its lease
        # runs out within `lease_s`: follow; the reader, or a survivor's sweep, ends it `worker_lost`).
        started = time.monotonic()
        worker_alive = True
        while start > end + 1 and terminal is None and worker_alive:
            waited = time.monotonic() - started
            if waited >= PAST_END_WAIT_S + self.lease_s:
                break
            await asyncio.sleep(0.05 if waited < PAST_END_WAIT_S else 0.2)
            end, terminal = await self._tail(run_id)
            if time.monotonic() - started >= PAST_END_WAIT_S:
                worker_alive = await self.worker_alive(info["worker"])
        lost = isinstance(terminal, RunError) and terminal.code == "worker_lost"  # (a survivor closed it)
        if start > end + 1 and not lost and (terminal is not None or worker_alive):
            raise EventIdPastEnd(start)
        session_id = info["session"] or None
        done = start > end and terminal is not None  # an EventSource reconnecting after the end, or the loss
        events = OffsetEvents(start if lost or not done else end)
        channel = RunChannel(run_id, owner=owner, session_id=session_id, events=events)
        if done:
            channel.publish(terminal)  # type: ignore[arg-type]
            return channel
        channel.bind_task(
            asyncio.create_task(self._read(channel, info["worker"], start), name=f"read {run_id}")
        )
        return channel

    async def _tail(self, run_id: str) -> tuple[int, Event | None]:
        """The index of the run's last logged event (-1: none) and that event if it ends the run."""
        last = await self._redis.xrevrange(self._key("run", run_id), count=1)
        if not last:
            return -1, None
        entry_id, fields = last[0]
        event = event_from_dict(json.loads(fields[b"e"]))
        terminal = event if type(event) is RunFinished or type(event) is RunError else None
        return int(entry_id.decode().split("-")[0]) - 1, terminal

    async def _read(self, channel: RunChannel, worker: str, start: int) -> None:
        """Publish the run's logged events from index `start` into `channel` until the run
        ends. Blocking reads go through the reader pool; the task is cancelled when the
        channel's last follower leaves."""
        stream = self._key("run", channel.run_id)
        follow = self._key("follow", channel.run_id)
        follow_ttl_s = max(5, int(self.heartbeat_s * 5))
        marked_at = 0.0
        expected = start
        try:
            while not channel.done:
                if time.monotonic() - marked_at >= self.heartbeat_s:
                    # the owner cancels an abandoned resumable run unless someone follows it here
                    marked_at = time.monotonic()
                    pipe = self._redis.pipeline(transaction=False).set(follow, b"1", ex=follow_ttl_s)
                    await pipe.publish(self._key("following"), channel.run_id.encode()).execute()
                reply = await self._reader.xread(
                    {stream: f"{expected}-0"}, block=int(self.heartbeat_s * 1000), count=1000
                )
                if reply:
                    for entry_id, fields in reply[0][1]:
                        index = int(entry_id.decode().split("-")[0]) - 1
                        if index != expected:  # a batch the owner could not write
                            channel.publish(RunError(message=LOG_GAP, code="internal"))
                            return
                        expected += 1
                        channel.publish(event_from_dict(json.loads(fields[b"e"])))
                    continue
                if not await self.worker_alive(worker):
                    await self.close_dead_run(channel.run_id, last_index=expected - 1)
        except asyncio.CancelledError:
            pass
        except Exception as exc:
            channel.publish(RunError(message=f"lost the run's event log: {exc}", code="internal"))
        finally:
            if not channel.done:
                channel.publish(RunError(message="stopped following the run", code="cancelled"))

    async def followed_elsewhere(self, run_id: str) -> bool:
        """Whether a client follows this run through another worker (see `_read`)."""
        return bool(await self._redis.exists(self._key("follow", run_id)))

    async def close_dead_run(self, run_id: str, *, last_index: int) -> None:
        """Append the terminal error event for a run whose worker died (once, whoever wins)."""
        stream = self._key("run", run_id)
        error = RunError(message=WORKER_LOST, code="worker_lost")
        with contextlib.suppress(Exception):  # another survivor already wrote it: fine
            await self._redis.xadd(stream, {"e": encode_event(error)}, id=f"{last_index + 2}-0")
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
                alive = {self.worker_id: True}  # one look-up per worker, not per run
                for run_id_b, worker_b in active.items():
                    worker = worker_b.decode()
                    if worker not in alive:
                        alive[worker] = await self.worker_alive(worker)
                    if alive[worker]:
                        continue
                    run_id = run_id_b.decode()
                    last = await self._redis.xrevrange(self._key("run", run_id), count=1)
                    last_index = int(last[0][0].decode().split("-")[0]) - 1 if last else -1
                    if last and is_terminal_entry(last[0][1]):
                        await self._redis.hdel(self._key("active"), run_id)
                        continue
                    log.warning("worker %s died during run %s; closing it", worker, run_id)
                    await self.close_dead_run(run_id, last_index=last_index)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("dead-worker sweep failed: %s", exc)
