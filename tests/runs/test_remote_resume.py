"""Resuming a run on a worker that does not own it (the Redis path), at its edges: a
`Last-Event-ID` at or past the end, huge ids, clients that leave, many readers at once.

Two real servers (LiveServer, one event loop each) in this process share one SQLite file and
the project's Redis under a private key prefix; worker A runs the answers, worker B follows
them from the shared log. Every answer B gives must be the one A (the owner) gives.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from server_fixture import LiveServer, wait_until
from services import REDIS, services_or_skip
from sse_frames import parse_sse
from tokenrelay.config import Settings
from tokenrelay.server.app import create_app
from tokenrelay.testing import ScriptedBackend

pytestmark = pytest.mark.services

ANSWER = "A remote reader sees exactly what the owner sees, " * 3
REPLY = json.dumps({"action": "Final Answer", "action_input": ANSWER})


def _reply(messages: Any) -> str:
    """Prompts starting with "short" get a short answer (finished at once even when paced)."""
    last = [m.content for m in messages if m.role == "user"][-1]
    if last.startswith("short"):
        return json.dumps({"action": "Final Answer", "action_input": "ok"})
    return REPLY


def _pair(tmp_path: Path, rate: float | None) -> tuple[LiveServer, LiveServer, str]:
    services_or_skip()
    prefix = f"trtest:{uuid.uuid4().hex[:8]}:"
    servers = []
    for _ in range(2):
        settings = Settings(
            db=f"sqlite:///{tmp_path / 'shared.db'}", redis_url=REDIS, redis_prefix=prefix, keepalive_s=0.5
        )
        backend = ScriptedBackend(replies=_reply, tokens_per_second=rate, token_size=4)
        servers.append(LiveServer(create_app(settings, backend=backend)).start())
    return servers[0], servers[1], prefix


@pytest.fixture
def finished_pair(tmp_path: Path) -> Iterator[tuple[LiveServer, LiveServer, str]]:
    a, b, prefix = _pair(tmp_path, rate=None)
    try:
        yield a, b, prefix
    finally:
        a.stop()
        b.stop()


@pytest.fixture
def paced_pair(tmp_path: Path) -> Iterator[tuple[LiveServer, LiveServer, str]]:
    a, b, prefix = _pair(tmp_path, rate=3)
    try:
        yield a, b, prefix
    finally:
        a.stop()
        b.stop()


def _finished_run(server: LiveServer, text: str = "hello") -> tuple[str, int]:
    """Run one answer to the end on `server`; its run id and last event id."""
    last = -1
    with httpx.stream(
        "POST", server.url + "/chat/events", json={"text": text, "resumable": True}, timeout=30
    ) as response:
        run_id = response.headers["x-run-id"]
        for event_id, _, _ in parse_sse(response.iter_lines()):
            assert event_id is not None
            last = event_id
    return run_id, last


def _resume(server: LiveServer, run_id: str, last_event_id: str, timeout: float = 5) -> tuple[int, Any]:
    response = httpx.get(
        f"{server.url}/runs/{run_id}/events", headers={"Last-Event-ID": last_event_id}, timeout=timeout
    )
    if response.headers.get("content-type", "").startswith("application/json"):
        return response.status_code, response.json()
    return response.status_code, response.text


def _wait_replicated(prefix: str, run_id: str, last: int) -> None:
    import redis

    client = redis.Redis.from_url(REDIS)
    try:
        assert wait_until(lambda: client.xlen(f"{prefix}run:{run_id}") == last + 1, timeout=10)
    finally:
        client.close()


def test_a_last_event_id_at_or_past_the_end_gets_the_owners_answer_on_every_worker(
    finished_pair: tuple[LiveServer, LiveServer, str],
) -> None:
    a, b, prefix = finished_pair
    run_id, last = _finished_run(a)
    _wait_replicated(prefix, run_id, last)
    for given in (str(last), str(last + 1), str(last + 7), "30000000", str(10**20), str(10**200)):
        t0 = time.monotonic()
        owner = _resume(a, run_id, given)
        other = _resume(b, run_id, given)  # hung forever before the fix (an httpx timeout here)
        assert other == owner, f"Last-Event-ID {given}: owner said {owner}, the other worker {other}"
        assert time.monotonic() - t0 < 5
    assert _resume(b, run_id, str(last))[0] == 200  # an EventSource reconnecting after the end
    assert _resume(b, run_id, str(last + 1))[0] == 422


def _text_and_end(body: str) -> tuple[str, str, int | None]:
    """The answer text a stream carried, its terminal event's type, and the last id."""
    frames = list(parse_sse(iter(body.splitlines())))
    text = "".join(str(d["text"]) for _, name, d in frames if name == "answer_delta")
    return text, frames[-1][1] if frames else "", frames[-1][0] if frames else None


def test_every_earlier_id_resumes_with_exactly_the_rest_on_the_other_worker(
    finished_pair: tuple[LiveServer, LiveServer, str],
) -> None:
    a, b, prefix = finished_pair
    run_id, last = _finished_run(a)
    _wait_replicated(prefix, run_id, last)
    for start in (0, 3, last - 1):
        owner = _resume(a, run_id, str(start))
        other = _resume(b, run_id, str(start))
        assert owner[0] == other[0] == 200
        assert _text_and_end(str(other[1])) == _text_and_end(str(owner[1]))
        assert _text_and_end(str(other[1]))[1:] == ("run_finished", last)
    whole = httpx.get(f"{b.url}/runs/{run_id}/events", timeout=5).text
    assert _text_and_end(whole) == (ANSWER, "run_finished", last)


def test_a_huge_last_event_id_costs_the_other_worker_no_memory(
    finished_pair: tuple[LiveServer, LiveServer, str], tmp_path: Path
) -> None:
    from server_fixture import rss_bytes

    a, b, prefix = finished_pair
    run_id, last = _finished_run(a)
    _wait_replicated(prefix, run_id, last)
    # a run still going: the owner cannot rule the id out yet either, so B must not allocate
    before = rss_bytes()
    for _ in range(3):
        status, _ = _resume(b, run_id, "30000000")
        assert status == 422
    assert rss_bytes() - before < 50_000_000  # `[None] * 30_000_000` alone is 240 MB


def _reader_tasks(server: LiveServer) -> int:
    import asyncio

    async def count() -> int:
        return sum(1 for t in asyncio.all_tasks() if t.get_name().startswith("read "))

    return server.run_in_loop(count())


def test_a_reader_on_the_other_worker_stops_when_its_client_leaves(
    paced_pair: tuple[LiveServer, LiveServer, str],
) -> None:
    a, b, _ = paced_pair
    with httpx.stream("POST", a.url + "/chat/events", json={"text": "slow", "resumable": True}) as r:
        run_id = r.headers["x-run-id"]
    for _ in range(5):  # followers that read the first event and hang up
        with httpx.stream("GET", f"{b.url}/runs/{run_id}/events", timeout=10) as r:
            assert r.status_code == 200
            next(r.iter_lines())
    assert wait_until(lambda: _reader_tasks(b) == 0, timeout=5), "readers outlived their clients"


def test_abandoned_readers_never_let_the_workers_heartbeat_lapse(
    paced_pair: tuple[LiveServer, LiveServer, str],
) -> None:
    """The reported failure: ~30 resume requests that never end (an id at the end of a finished
    run) held the shared pool with blocking reads; the heartbeat key expired while the worker
    was serving, and its new runs could not be resumed or cancelled from elsewhere."""
    import socket

    import redis

    a, b, prefix = paced_pair
    run_id, last = _finished_run(a, "short")
    _wait_replicated(prefix, run_id, last)
    with httpx.stream("POST", a.url + "/chat/events", json={"text": "x", "resumable": True}) as r:
        live_run = r.headers["x-run-id"]
    # 60 raw connections asking B to follow A's runs: at the end of the finished one (they hung
    # forever before the fix) and from the start of one still going
    sockets = []
    for i in range(60):
        s = socket.create_connection(("127.0.0.1", b.port))
        target, given = (live_run, 0) if i % 4 == 0 else (run_id, last)
        head = f"GET /runs/{target}/events HTTP/1.1\r\nHost: 127.0.0.1\r\nLast-Event-ID: {given}\r\n\r\n"
        s.sendall(head.encode())
        sockets.append(s)
    worker = b.app.state.coordinator.worker_id  # type: ignore[attr-defined]
    client = redis.Redis.from_url(REDIS)
    try:
        lapsed = 0
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            if not client.exists(f"{prefix}worker:{worker}"):
                lapsed += 1
            time.sleep(0.1)
        assert lapsed == 0, f"B's heartbeat key was missing {lapsed} times in 8 s"
        # and B's new runs still reach Redis: A can resume them
        new_run, _ = _finished_run(b, "short")
        status, _ = _resume(a, new_run, "0", timeout=30)
        assert status == 200
    finally:
        client.close()
        for s in sockets:
            s.close()
    assert wait_until(lambda: _reader_tasks(b) == 0, timeout=10), "readers outlived their clients"


@pytest.mark.anyio
async def test_a_resume_past_the_log_of_a_run_its_owner_lost_gets_the_loss() -> None:
    """The owner died before logging what its client saw, and a survivor's sweep closed the run:
    a Last-Event-ID past the log gets the `worker_lost` error (not a 422, not an empty stream);
    one inside the log reads the rest of it, then the loss."""
    import redis.asyncio as aioredis

    from tokenrelay.events import AnswerDelta, RunError
    from tokenrelay.runs.redis import RedisCoordinator
    from tokenrelay.runs.redis_log import encode_event

    services_or_skip()
    prefix = f"trtest:{uuid.uuid4().hex[:8]}:"
    client = aioredis.Redis.from_url(REDIS)
    coordinator = RedisCoordinator(REDIS, prefix=prefix)
    await coordinator.start(lambda run_id: False)
    try:
        await client.hset(f"{prefix}runinfo:r9", mapping={"owner": "", "worker": "gone", "session": ""})
        for i in range(2):  # what the owner logged: indices 0 and 1
            await client.xadd(
                f"{prefix}run:r9", {"e": encode_event(AnswerDelta(text=f"t{i}"))}, id=f"{i + 1}-0"
            )
        await coordinator.close_dead_run("r9", last_index=1)  # the loss, at index 2
        for start in (3, 7):
            remote = await coordinator.remote_channel("r9", owner=None, start=start)
            assert remote is not None and remote.done
            loss = remote.events[start]
            assert isinstance(loss, RunError) and loss.code == "worker_lost"
        remote = await coordinator.remote_channel("r9", owner=None, start=1)
        assert remote is not None
        for _ in range(100):
            if remote.done:
                break
            await asyncio.sleep(0.02)
        rest = list(remote.events[1:])
        assert rest[0] == AnswerDelta(text="t1") and isinstance(rest[1], RunError) and len(rest) == 2
    finally:
        await coordinator.close()
        keys = [key async for key in client.scan_iter(f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
