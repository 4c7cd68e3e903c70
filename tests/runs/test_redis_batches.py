"""The Redis run-log writer's batches: one script call per batch carries every queued op in the
order it was queued (a run's events by index, its terminal event and clean-up last); a batch
is flushed without further events (a run's end lands), a run's registration and a shutdown
without waiting for the batch interval; a retried batch never duplicates an
entry; a script error is logged, not swallowed; and the one-step packing of deltas is the
generic packing. Needs the Redis this project's machines run (127.0.0.1:6379): skipped
without it, a failure in CI."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tokenrelay.events import AnswerDelta, ReasoningDelta, RunFinished, Timings, Usage, event_to_dict
from tokenrelay.runs.channel import RunChannel
from tokenrelay.runs.redis import RedisCoordinator
from tokenrelay.runs.redis_log import BatchWriter, encode_event, pack_op, xadd_head, xadd_op

REDIS = os.environ.get("TOKENRELAY_TEST_REDIS", "redis://127.0.0.1:6379/0")

pytestmark = pytest.mark.anyio

TEXTS = ["abcd", "", 'q"uote\\ back\nnew', "\u00e9t\u00e9 \u2028 \x01 \U0001f600"]


@pytest.fixture
async def redis() -> AsyncIterator[Any]:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(REDIS, socket_connect_timeout=3)
    try:
        await client.ping()
    except Exception as exc:
        await client.aclose()
        if os.environ.get("CI"):
            pytest.fail(f"Redis missing in CI: {exc}")
        pytest.skip(f"Redis at {REDIS}: {exc}")
    yield client
    await client.aclose()


@pytest.fixture
def prefix() -> str:
    return f"test-batches:{uuid.uuid4().hex[:8]}:"


async def _cleanup(redis: Any, prefix: str) -> None:
    keys = [key async for key in redis.scan_iter(f"{prefix}*")]
    if keys:
        await redis.delete(*keys)


def test_delta_packing_is_the_generic_packing() -> None:
    head = xadd_head("tokenrelay:run:r1")
    for text in TEXTS:
        for cls in (AnswerDelta, ReasoningDelta):
            event = cls(text=text)
            generic = json.dumps(event_to_dict(event), ensure_ascii=False, separators=(",", ":")).encode()
            assert encode_event(event) == generic
            assert xadd_op(head, 41, event) == pack_op("XADD", "tokenrelay:run:r1", "42-0", "e", generic)


async def test_ops_apply_in_order_and_a_retried_batch_does_not_duplicate(redis: Any, prefix: str) -> None:
    writer = BatchWriter(redis, min_interval_s=0.005, max_ops_per_call=7)  # several calls per batch
    stream = f"{prefix}run:a"
    head = xadd_head(stream)
    try:
        ops = [xadd_op(head, i, AnswerDelta(text=TEXTS[i % len(TEXTS)])) for i in range(50)]
        for op in ops:
            writer.add_packed("XADD", op)
        writer.add("HSET", f"{prefix}active", "a", "w1")
        writer.add_essential("HDEL", f"{prefix}active", "a")  # after the HSET: nothing left
        for _ in range(100):
            await asyncio.sleep(0.02)
            if not writer.pending and await redis.xlen(stream) == 50:
                break
        for op in ops[:20]:  # what a retry after a lost reply sends again
            writer.add_packed("XADD", op)
        writer.add_packed("XADD", xadd_op(head, 50, AnswerDelta(text="end")))
        for _ in range(100):
            await asyncio.sleep(0.02)
            if not writer.pending and await redis.xlen(stream) == 51:
                break
        entries = await redis.xrange(stream)
        assert [entry_id for entry_id, _ in entries] == [b"%d-0" % (i + 1) for i in range(51)]
        texts = [json.loads(fields[b"e"])["text"] for _, fields in entries]
        assert texts == [TEXTS[i % len(TEXTS)] for i in range(50)] + ["end"]
        assert await redis.hlen(f"{prefix}active") == 0
    finally:
        await writer.close()
        await _cleanup(redis, prefix)


async def test_a_runs_end_is_flushed_with_nothing_after_it(redis: Any, prefix: str) -> None:
    coordinator = RedisCoordinator(REDIS, prefix=prefix, retention_s=30.0, batch_interval_s=0.05)
    await coordinator.start(lambda run_id: False)
    try:
        channel = RunChannel("r1", owner="alice", session_id="s1")
        coordinator.replicate(channel)
        for i in range(30):
            channel.publish(AnswerDelta(text=f"t{i} "))
        channel.publish(
            RunFinished(answer="done", usage=Usage(), timings=Timings(first_token_s=0.0, total_s=1.0))
        )
        stream = f"{prefix}run:r1"
        for _ in range(100):  # one batch interval and a round trip, not a wait for more events
            await asyncio.sleep(0.02)
            if await redis.xlen(stream) == 31:
                break
        entries = await redis.xrange(stream)
        kinds = [json.loads(fields[b"e"])["type"] for _, fields in entries]
        assert kinds == ["answer_delta"] * 30 + ["run_finished"]
        assert await redis.hget(f"{prefix}active", "r1") is None
        assert await redis.pttl(stream) > 0  # expires: the final answer lives in the database
        info = await redis.hgetall(f"{prefix}runinfo:r1")
        assert info[b"owner"] == b"alice" and info[b"session"] == b"s1"
        # a reader on another worker sees every event once, in order, then the end
        remote = await coordinator.remote_channel("r1", owner="alice", start=5)
        assert remote is not None
        for _ in range(100):
            if remote.done:
                break
            await asyncio.sleep(0.02)
        assert [e.text for e in remote.events if type(e) is AnswerDelta] == [f"t{i} " for i in range(5, 30)]
        assert type(remote.events[-1]) is RunFinished
    finally:
        await coordinator.close()
        await _cleanup(redis, prefix)


async def test_a_script_error_is_logged(redis: Any, prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    writer = BatchWriter(redis, min_interval_s=0.0)
    try:
        with caplog.at_level(logging.ERROR, logger="tokenrelay.server"):
            writer.add_packed("XADD", b"\xc1")  # never valid MessagePack: the script fails
            for _ in range(50):
                await asyncio.sleep(0.01)
                if writer.batches:
                    break
        assert "the batch script failed" in caplog.text
        writer.add("HSET", f"{prefix}x", "y", "z")  # the connection still works after an error reply
        for _ in range(50):
            await asyncio.sleep(0.01)
            if writer.batches == 2:
                break
        assert await redis.hget(f"{prefix}x", "y") == b"z"
    finally:
        await writer.close()
        await _cleanup(redis, prefix)


async def test_registration_and_shutdown_do_not_wait_for_the_batch_interval(redis: Any, prefix: str) -> None:
    coordinator = RedisCoordinator(
        REDIS, prefix=prefix, retention_s=30.0, batch_interval_s=2.0, idle_batch_interval_s=2.0
    )
    await coordinator.start(lambda run_id: False)
    try:
        await asyncio.sleep(0.1)  # the first heartbeat's ops are out of the way
        channel = RunChannel("r2", owner=None, session_id=None)
        coordinator.replicate(channel)
        channel.publish(AnswerDelta(text="a"))  # rides along with the registration
        for _ in range(50):
            await asyncio.sleep(0.02)
            if await coordinator.run_info("r2") is not None:
                break
        assert await coordinator.run_info("r2") is not None  # well before the 2 s interval
        assert await redis.hget(f"{prefix}active", "r2") is not None
        channel.publish(AnswerDelta(text="b"))  # an event alone waits for the interval
        await asyncio.sleep(0.2)
        assert await redis.xlen(f"{prefix}run:r2") == 1
        coordinator.replicate(RunChannel("r2b", owner=None, session_id=None))  # ends that wait
        await asyncio.sleep(0.2)
        assert await coordinator.run_info("r2b") is not None
        assert await redis.xlen(f"{prefix}run:r2") == 2
        channel.publish(AnswerDelta(text="c"))
        await coordinator.close()  # ... but not at shutdown: what is queued goes out
        assert await redis.xlen(f"{prefix}run:r2") == 3
    finally:
        await coordinator.close()
        await _cleanup(redis, prefix)


async def test_the_log_is_written_often_only_while_someone_follows_a_run_elsewhere(
    redis: Any, prefix: str
) -> None:
    owner = RedisCoordinator(
        REDIS, prefix=prefix, retention_s=30.0, batch_interval_s=0.02, idle_batch_interval_s=3.0
    )
    reader = RedisCoordinator(REDIS, prefix=prefix, retention_s=30.0)
    await owner.start(lambda run_id: False)
    await reader.start(lambda run_id: False)
    try:
        channel = RunChannel("r3", owner=None, session_id=None)
        owner.replicate(channel)  # the registration goes at once
        await asyncio.sleep(0.2)
        channel.publish(AnswerDelta(text="a"))
        await asyncio.sleep(0.3)
        assert await redis.xlen(f"{prefix}run:r3") == 0  # nobody follows elsewhere: batched for 3 s
        remote = await reader.remote_channel("r3", owner=None, start=0)
        assert remote is not None
        for _ in range(100):  # the reader says it follows: the owner's wait ends, batches every 20 ms
            await asyncio.sleep(0.02)
            if len(remote.events) == 1:
                break
        assert len(remote.events) == 1
        channel.publish(AnswerDelta(text="b"))
        await asyncio.sleep(0.5)
        assert [e.text for e in remote.events if type(e) is AnswerDelta] == ["a", "b"]
    finally:
        await reader.close()
        await owner.close()
        await _cleanup(redis, prefix)
