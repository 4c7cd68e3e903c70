"""Per-key limits (runs in flight, sessions, requests per minute) and `GET /sessions` paging,
against a real server; the shared counts with two workers on one Redis."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from server_fixture import LiveServer, make_app, wait_until
from tokenrelay.testing import ScriptedBackend

SLOW = ['{"action": "Final Answer", "action_input": "', *["slow "] * 40, '"}']
K1 = {"X-API-Key": "k1"}
K2 = {"X-API-Key": "k2"}
KEYS = frozenset({"k1", "k2"})


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    servers: list[LiveServer] = []

    def start(backend: Any = None, db: str = "q.db", **settings: Any) -> LiveServer:
        backend = backend or ScriptedBackend(replies=[SLOW], tokens_per_second=20)
        server = LiveServer(make_app(tmp_path / db, backend, **settings)).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def _is_429(response: httpx.Response, code: str) -> None:
    assert response.status_code == 429, response.text
    assert 1 <= int(response.headers["retry-after"]) <= 60
    error = response.json()["error"]
    assert error["code"] == code and error["type"] == "rate_limit_error" and error["message"]


def test_runs_in_flight_are_limited_per_key(serve: Callable[..., LiveServer]) -> None:
    server = serve(api_keys=KEYS, max_runs_per_key=2)
    kept = []  # the iterators: dropping one closes its stream (a disconnect)
    with ExitStack() as stack, httpx.Client(timeout=30) as http:
        for _ in range(2):
            r = stack.enter_context(http.stream("POST", server.url + "/chat", json={"text": "q"}, headers=K1))
            assert r.status_code == 200
            kept.append(r.iter_raw())
            next(kept[-1])  # started
        _is_429(http.post(server.url + "/chat", json={"text": "one more"}, headers=K1), "too_many_runs")
        _is_429(
            http.post(server.url + "/chat/events", json={"text": "one more"}, headers=K1), "too_many_runs"
        )
        openai = {"messages": [{"role": "user", "content": "x"}], "stream": True}
        _is_429(http.post(server.url + "/v1/chat/completions", json=openai, headers=K1), "too_many_runs")
        other = http.post(server.url + "/chat", json={"text": "k2 is not limited by k1"}, headers=K2)
        assert other.status_code == 200
    # the two ended (their clients left): k1 may start again
    assert wait_until(
        lambda: (
            httpx.post(server.url + "/chat", json={"text": "again"}, headers=K1, timeout=30).status_code
            == 200
        ),
        timeout=10,
    )


def test_runs_asked_for_at_once_never_exceed_the_limit(serve: Callable[..., LiveServer]) -> None:
    """Many requests at once: each one's session lookup is an await between the check and the
    run's start, so a check that does not reserve lets them all through."""
    server = serve(api_keys=KEYS, max_runs_per_key=2)
    statuses: list[int] = []
    barrier = threading.Barrier(12)

    def ask() -> None:
        with httpx.Client(timeout=30) as http:
            barrier.wait()
            statuses.append(http.post(server.url + "/chat", json={"text": "q"}, headers=K1).status_code)

    threads = [threading.Thread(target=ask) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200, 200] + [429] * 10


def test_sessions_are_limited_per_key(serve: Callable[..., LiveServer]) -> None:
    server = serve(ScriptedBackend(replies=['{"action": "Final Answer", "action_input": "ok"}']),
                   api_keys=KEYS, max_sessions_per_key=3)  # fmt: skip
    ids = [httpx.post(server.url + "/sessions", headers=K1).json()["id"] for _ in range(3)]
    _is_429(httpx.post(server.url + "/sessions", headers=K1), "too_many_sessions")
    _is_429(httpx.post(server.url + "/chat", json={"text": "a new session"}, headers=K1), "too_many_sessions")
    chat = httpx.post(server.url + "/chat", json={"text": "an old one", "session_id": ids[0]}, headers=K1)
    assert chat.status_code == 200  # existing sessions go on
    assert httpx.post(server.url + "/sessions", headers=K2).status_code == 201
    assert httpx.delete(f"{server.url}/sessions/{ids[1]}", headers=K1).status_code == 204
    assert httpx.post(server.url + "/sessions", headers=K1).status_code == 201


def _within_one_minute() -> None:
    """Wait, if need be, so the next few seconds' requests fall in one counting minute (the
    limit counts per calendar minute: requests across a boundary start a new count)."""
    if time.time() % 60 > 45:
        time.sleep(60.5 - time.time() % 60)


def test_requests_per_minute_are_limited_per_key(serve: Callable[..., LiveServer]) -> None:
    server = serve(api_keys=KEYS, requests_per_minute_per_key=5)
    _within_one_minute()
    with httpx.Client(timeout=10) as http:
        for _ in range(5):
            assert http.get(server.url + "/sessions", headers=K1).status_code == 200
        _is_429(http.get(server.url + "/sessions", headers=K1), "rate_limited")
        _is_429(http.post(server.url + "/chat", json={"text": "x"}, headers=K1), "rate_limited")
        assert http.get(server.url + "/sessions", headers=K2).status_code == 200
        assert http.get(server.url + "/health").status_code == 200  # liveness is never limited


def test_without_keys_nothing_is_limited(serve: Callable[..., LiveServer]) -> None:
    server = serve(requests_per_minute_per_key=2, max_sessions_per_key=1)
    for _ in range(4):
        assert httpx.post(server.url + "/sessions").status_code == 201


def test_limits_are_shared_by_workers_on_one_redis(serve: Callable[..., LiveServer]) -> None:
    from services import REDIS, services_or_skip

    services_or_skip()
    prefix = f"trtest:{uuid.uuid4().hex[:8]}:"
    shared = {"api_keys": KEYS, "redis_url": REDIS, "redis_prefix": prefix, "db": "shared.db"}
    a = serve(max_runs_per_key=2, requests_per_minute_per_key=1000, **shared)
    b = serve(max_runs_per_key=2, requests_per_minute_per_key=1000, **shared)
    with ExitStack() as stack, httpx.Client(timeout=30) as http:
        kept = []  # the iterators: dropping one closes its stream (a disconnect)
        for server in (a, b):
            r = stack.enter_context(http.stream("POST", server.url + "/chat", json={"text": "q"}, headers=K1))
            kept.append(r.iter_raw())
            next(kept[-1])
        for server in (a, b):
            _is_429(http.post(server.url + "/chat", json={"text": "third"}, headers=K1), "too_many_runs")
    assert wait_until(
        lambda: (
            httpx.post(b.url + "/chat", json={"text": "again"}, headers=K1, timeout=30).status_code == 200
        ),
        timeout=10,
    )
    c = serve(requests_per_minute_per_key=4, **shared)
    d = serve(requests_per_minute_per_key=4, **shared)
    _within_one_minute()
    statuses = [httpx.get(s.url + "/sessions", headers=K2).status_code for s in (c, d, c, d, c, d)]
    assert statuses.count(200) == 4 and statuses[-2:] == [429, 429]


@pytest.mark.parametrize("keys", [frozenset(), KEYS])
def test_sessions_are_listed_a_page_at_a_time(serve: Callable[..., LiveServer], keys: frozenset[str]) -> None:
    server = serve(
        ScriptedBackend(replies=['{"action": "Final Answer", "action_input": "ok"}']), api_keys=keys
    )
    headers = K1 if keys else {}
    created = [httpx.post(server.url + "/sessions", headers=headers).json()["id"] for _ in range(25)]
    if keys:
        httpx.post(server.url + "/sessions", headers=K2)  # another key's: never listed
    seen: list[str] = []
    pages = 0
    url: str | None = server.url + "/sessions?limit=10"
    while url is not None:
        response = httpx.get(url, headers=headers)
        assert response.status_code == 200
        page = response.json()
        assert isinstance(page, list)  # the old shape
        seen += [s["id"] for s in page]
        pages += 1
        cursor = response.headers.get("x-next-cursor")
        if cursor is None:
            assert "link" not in response.headers
            url = None
        else:
            assert response.headers["link"].endswith('>; rel="next"')
            url = server.url + response.headers["link"][1:].split(">", 1)[0]
    assert pages == 3
    assert seen == created[::-1]  # most recent first, each once
    bad = httpx.get(server.url + "/sessions?cursor=s_nope", headers=headers)
    assert bad.status_code == 422 and "cursor" in bad.json()["error"]["message"]
    if keys:
        theirs = httpx.get(server.url + "/sessions", headers=K2).json()[0]["id"]
        assert httpx.get(server.url + f"/sessions?cursor={theirs}", headers=K1).status_code == 422
