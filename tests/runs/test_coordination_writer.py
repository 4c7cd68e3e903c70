"""The Redis run-log writer while Redis is away: bounded retries with backoff, then only the
ops that end runs are kept, so an outage costs bounded memory (it re-queued everything every
0.5 s, forever, before). Redis itself is replaced by a connection that always fails."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from tokenrelay.runs.redis_log import BatchWriter


class _DownConnection:
    """The writer's own connection, to a Redis that is away."""

    calls: list[int]

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        self.calls.append(1)
        raise ConnectionError("Redis is away")

    async def disconnect(self) -> None:
        pass


class _DownRedis:
    def __init__(self) -> None:
        self.calls: list[int] = []
        connection = type("Connection", (_DownConnection,), {"calls": self.calls})
        self.connection_pool = SimpleNamespace(connection_class=connection, connection_kwargs={})


@pytest.mark.anyio
async def test_the_writer_gives_up_on_events_but_keeps_what_ends_runs() -> None:
    redis = _DownRedis()
    writer = BatchWriter(redis, max_attempts=3, max_queued=1000)
    try:
        for i in range(500):
            writer.add("XADD", "run:r", f"{i + 1}-0", "e", b"{}")
        writer.add_essential("XADD", "run:r", "501-0", "e", b"{}")
        writer.add_essential("HDEL", "active", "r")
        for _ in range(100):  # 3 attempts with backoff (0.2 + 0.4 s), then the drop
            await asyncio.sleep(0.05)
            if writer.dropped:
                break
        assert writer.dropped == 500
        assert [op[0] for op in writer._ops] == ["XADD", "HDEL"]  # the terminal event survives
        attempts = len(redis.calls)
        await asyncio.sleep(0.5)
        assert len(redis.calls) - attempts <= 2  # backing off, not spinning
    finally:
        await writer.close()


@pytest.mark.anyio
async def test_a_flood_during_an_outage_is_capped() -> None:
    writer = BatchWriter(_DownRedis(), max_attempts=100, max_queued=200)
    try:
        await asyncio.sleep(0)
        for i in range(1000):
            writer.add("XADD", "run:r", f"{i + 1}-0", "e", b"{}")
        for _ in range(100):
            await asyncio.sleep(0.05)
            if writer.dropped:
                break
        assert writer.dropped >= 800 and len(writer._ops) <= 200
    finally:
        await writer.close()
