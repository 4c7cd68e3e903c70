"""The pieces of the Redis run logs that do not talk to the coordinator: the batching writer
(one script call per batch for all of a worker's runs, bounded through an outage), the wire
form of a logged event, the per-key run claim script, and the backoff every Redis loop uses.

Why the writer talks RESP on a connection of its own instead of through a redis-py pipeline:
measured per batch (100 ops, one `EVAL`), the pipeline cost 164 µs of the worker's CPU, the
same call written pre-packed on a dedicated connection 97 µs; and why its ops are MessagePack
(decoded by `cmsgpack`, which Redis's Lua has always shipped) instead of netstrings parsed in
Lua: 1.7 instead of 3.1-3.4 µs of redis-server CPU per op (bench/README.md, round six)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import struct
import time
from collections.abc import Callable
from typing import Any

from tokenrelay.events import AnswerDelta, Event, ReasoningDelta, RunError, RunFinished, event_to_dict

__all__ = [
    "APPLY_OPS",
    "CLAIM_RUN",
    "BatchWriter",
    "backoff",
    "encode_event",
    "is_terminal_entry",
    "log_sink",
    "pack_batch",
    "pack_op",
    "xadd_head",
    "xadd_op",
]

log = logging.getLogger("tokenrelay.server")

#: one queued op: its command name (for logs and tests), its packed form (see `pack_op`), and
#: whether it is kept through an outage (it ends a run)
_Op = tuple[str, bytes, bool]


class BatchWriter:
    """One task that sends every queued Redis command of the worker's runs: the ops queued since
    the last batch go as one `EVAL` of `APPLY_OPS` (a few, in one write, past `max_ops_per_call`),
    so a batch costs one command to pack and one reply to parse however many events it carries.
    It writes on a connection of its own, made with the settings of `redis`'s pool (URL, auth,
    TLS, timeouts), reconnected by redis-py on the next batch after a failure.
    The writer waits after it is woken so that a batch gathers the events of many runs:
    `min_interval_s` while someone follows a run through another worker (`hurry`: they see
    events that much later), `idle_interval_s` otherwise (the log then serves resumes and
    cancels, which wait for it: a batch costs the worker the same whatever it carries, so fewer
    batches are cheaper per token), and not at all when a `prompt` op is queued (a run's
    registration). The owner's own followers are never delayed. While a batch is in flight the
    next one accumulates.

    Order: ops are applied in the order they were added (one script runs them in order, and a
    batch is sent only after the one before it was answered), so a run's events land in index
    order and its terminal event after them.

    Failures: a failed batch is retried with exponential backoff (entries already written are
    refused by their ids and the script skips them, so a retry never duplicates an event); after
    `max_attempts` failures, or while more than `max_queued` ops wait, the ops that are not
    essential (events before a run's last) are dropped: memory stays bounded however long Redis
    is away, and readers see the hole and end with an error."""

    def __init__(
        self,
        redis: Any,
        *,
        max_attempts: int = 6,
        max_queued: int = 100_000,
        min_interval_s: float = 0.025,
        idle_interval_s: float | None = None,
        max_ops_per_call: int = 2000,
    ) -> None:
        """`idle_interval_s`: the batch interval while nobody follows elsewhere (None: the same
        as `min_interval_s`)."""
        from redis.exceptions import ResponseError  # the writer exists only where Redis is used

        self._script_error: type[Exception] = ResponseError
        pool = redis.connection_pool
        self._conn: Any = pool.connection_class(**pool.connection_kwargs)
        self.max_attempts = max_attempts
        self.max_queued = max_queued
        self.min_interval_s = min_interval_s
        self.idle_interval_s = min_interval_s if idle_interval_s is None else idle_interval_s
        self._hurry_until = 0.0
        #: the wait for the batch interval, while one goes on (`hurry` ends an idle one early)
        self._nap: asyncio.Future[None] | None = None
        self.max_ops_per_call = max_ops_per_call
        self._ops: list[_Op] = []
        self._prompt = False
        #: the batch being sent (sent again by `close` if the writer is stopped mid-send)
        self._inflight: list[_Op] = []
        self._wake = asyncio.Event()
        #: ops dropped since start (for logs and tests)
        self.dropped = 0
        #: batches sent and failed since start (for tests and benchmarks)
        self.batches = 0
        self._task = asyncio.create_task(self._run(), name="tokenrelay redis writer")

    def add(self, name: str, *args: str | bytes | int, prompt: bool = False) -> None:
        """Queue the command `name args...` (e.g. `add("HDEL", key, field)`). `prompt`: send
        the batch without waiting `min_interval_s` (a run's registration: other workers must
        find the run as soon as its client may ask them about it; a batch being gathered goes
        at once)."""
        self._ops.append((name, pack_op(name, *args), False))
        if prompt:
            self._prompt = True
            if self._nap is not None:  # the batch being gathered goes now
                _end_nap(self._nap)
        self._wake.set()

    def add_essential(self, name: str, *args: str | bytes | int) -> None:
        """Queue a command that is kept through an outage (it ends a run)."""
        self._ops.append((name, pack_op(name, *args), True))
        self._wake.set()

    def add_packed(self, name: str, op: bytes, essential: bool = False) -> None:
        """Queue a command packed already (`pack_op`, `xadd_op`): the per-token path."""
        self._ops.append((name, op, essential))
        self._wake.set()

    def hurry(self, seconds: float) -> None:
        """Batch every `min_interval_s` for the next `seconds`: a client follows a run through
        another worker (renewed while it does). An idle interval under way ends now."""
        now = time.monotonic()
        if now >= self._hurry_until and self._nap is not None:
            _end_nap(self._nap)
        self._hurry_until = max(self._hurry_until, now + seconds)

    @property
    def interval_s(self) -> float:
        """The batch interval now."""
        return self.min_interval_s if time.monotonic() < self._hurry_until else self.idle_interval_s

    @property
    def pending(self) -> int:
        """Ops queued and not yet sent."""
        return len(self._ops)

    async def _send(self, ops: list[_Op]) -> None:
        step = self.max_ops_per_call
        chunks: list[bytes] = []
        for i in range(0, len(ops), step):
            payload = pack_batch([op[1] for op in ops[i : i + step]])
            chunks += (_EVAL_HEAD, b"$%d\r\n" % len(payload), payload, b"\r\n")
        conn = self._conn
        await conn.send_packed_command(chunks, check_health=False)
        for _ in range(0, len(ops), step):
            try:
                await conn.read_response()
            except self._script_error as exc:  # a script error: a bug, never a Redis outage
                log.error("writing run logs to Redis: the batch script failed: %s", exc)

    async def _run(self) -> None:
        failures = 0
        while True:
            await self._wake.wait()
            interval = self.interval_s
            if interval > 0 and not failures and not self._prompt:
                await self._sleep(interval)  # gather more runs' events in the batch
            self._wake.clear()
            self._prompt = False
            ops = self._inflight = self._ops
            self._ops = []
            try:
                await self._send(ops)
                self._inflight = []
                self.batches += 1
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._inflight = []
                failures += 1
                queued = ops + self._ops
                if failures >= self.max_attempts or len(queued) > self.max_queued:
                    kept = [op for op in queued if op[2]]
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

    async def _sleep(self, seconds: float) -> None:
        """`asyncio.sleep(seconds)` that `hurry` can end early (the same future and timer)."""
        loop = asyncio.get_running_loop()
        nap = self._nap = loop.create_future()
        timer = loop.call_later(seconds, _end_nap, nap)
        try:
            await nap
        finally:
            timer.cancel()
            self._nap = None

    async def close(self) -> None:
        """Stop, then send what is queued and the batch that was in flight (sending an entry
        twice is harmless: the script skips ids written already) in one last batch, without
        waiting for the batch interval (best effort: 1 s at most)."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        ops = self._inflight + self._ops
        self._inflight, self._ops = [], []
        if ops:
            try:
                await asyncio.wait_for(self._send(ops), 1.0)
            except Exception as exc:
                log.error("writing run logs to Redis at shutdown failed (%s); dropped %d ops", exc, len(ops))
        with contextlib.suppress(Exception):
            await self._conn.disconnect()


def _end_nap(nap: asyncio.Future[None]) -> None:
    if not nap.done():
        nap.set_result(None)


def pack_op(name: str, *args: str | bytes | int) -> bytes:
    """A command in the batch script's wire form: a MessagePack array of its words (the name
    first), each a string (fixstr below 32 bytes, else str32: formats every MessagePack
    decoder reads, Redis's `cmsgpack` included)."""
    words = [name.encode(), *(a if type(a) is bytes else str(a).encode() for a in args)]
    if len(words) > 15:
        raise ValueError(f"{name}: at most 15 words in an op")
    return b"%c" % (0x90 | len(words)) + b"".join([_mp_str(w) for w in words])


def pack_batch(ops: list[bytes]) -> bytes:
    """The script's argument: the packed ops as one MessagePack array (array32)."""
    return b"\xdd" + _u32(len(ops)) + b"".join(ops)


_u32 = struct.Struct(">I").pack


def _mp_str(word: bytes) -> bytes:
    n = len(word)
    return b"%c%s" % (0xA0 | n, word) if n < 32 else b"\xdb%s%s" % (_u32(n), word)


def log_sink(
    writer: BatchWriter, stream: str, ends: list[tuple[str, str, str | int]]
) -> Callable[[int, Event], None]:
    """The sink (`RunChannel.replicate`) that mirrors a run's events into `stream`: each event
    one XADD with entry id `{index + 1}-0`, packed and queued on `writer` (no await, no round
    trip on the per-token path); the terminal event and then the ops `ends` (the run's clean-up)
    are kept through an outage, so readers end instead of waiting."""
    head = xadd_head(stream)
    add = writer.add_packed

    def sink(index: int, event: Event) -> None:
        if type(event) is RunFinished or type(event) is RunError:
            add("XADD", xadd_op(head, index, event), True)
            for name, *args in ends:
                writer.add_essential(name, *args)
        else:
            add("XADD", xadd_op(head, index, event))

    return sink


def backoff(failures: int) -> float:
    """Seconds to wait after `failures` failures in a row: 0.1 s doubling, capped at 5 s."""
    return float(min(5.0, 0.1 * 2 ** min(failures, 16)))


_to_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode  # built once: per token
_quote: Callable[[str], str] = json.encoder.encode_basestring  # the C encoder, no ASCII escapes


def encode_event(event: Event) -> bytes:
    """An event as a stream entry's `e` field (compact JSON, UTF-8)."""
    if type(event) is AnswerDelta or type(event) is ReasoningDelta:  # most of the traffic
        return ('{"type":"' + event.type + '","text":' + _quote(event.text) + "}").encode()
    return _to_json(event_to_dict(event)).encode()


def xadd_head(stream: str) -> bytes:
    """The start of `pack_op("XADD", stream, ...)`, once per run (see `xadd_op`)."""
    return b"\x95\xa4XADD" + _mp_str(stream.encode())


def xadd_op(head: bytes, index: int, event: Event) -> bytes:
    """`pack_op("XADD", stream, f"{index + 1}-0", "e", encode_event(event))` in one step: the
    event as its run's log entry (`head` from `xadd_head`). An entry id is under 32 bytes (a
    fixstr), an event's JSON never is (`{"type":...}`: a str32)."""
    entry = b"%d-0" % (index + 1)
    payload = encode_event(event)
    return b"%s%c%s\xa1e\xdb%s%s" % (head, 0xA0 | len(entry), entry, _u32(len(payload)), payload)


def is_terminal_entry(fields: dict[bytes, bytes]) -> bool:
    kind = json.loads(fields[b"e"]).get("type")
    return kind in ("run_finished", "error")


#: run the ops of a `pack_batch` (ARGV[1]) in order; an op that fails (an entry id written
#: already, when a batch is retried) is skipped. Returns how many ops it ran.
APPLY_OPS = """
local ops = cmsgpack.unpack(ARGV[1])
for i = 1, #ops do
  redis.pcall(unpack(ops[i]))
end
return #ops
"""

_SCRIPT = APPLY_OPS.encode()
#: `EVAL APPLY_OPS 0` in RESP, before the batch argument
_EVAL_HEAD = b"*4\r\n$4\r\nEVAL\r\n$%d\r\n%s\r\n$1\r\n0\r\n" % (len(_SCRIPT), _SCRIPT)

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
