"""Faults in the services behind the server, mid-run: PostgreSQL restarted, Redis restarted or
unreachable, the disk full under SQLite. Every run either finishes or ends with an `error`
event (never a hang); the user's message and the (partial) answer are stored once the store is
back; the server recovers without a restart.

The services are private instances (tests/private_services.py), never the shared ones.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from private_services import private_postgres, private_redis
from server_fixture import LiveServer, wait_until
from sse_frames import parse_sse
from tokenrelay.config import Settings
from tokenrelay.messages import Message
from tokenrelay.server.app import create_app
from tokenrelay.testing import ScriptedBackend

pytestmark = pytest.mark.services

WORDS = [f"word{i:02d}-" + "x" * 200 + " " for i in range(60)]  # ~12 KB: it needs new pages
LONG = "".join(WORDS)


def _reply(messages: list[Message]) -> list[str]:
    last = [m.content for m in messages if m.role == "user"][-1]
    if last.startswith("long"):
        return ['{"action": "Final Answer", "action_input": "', *WORDS, '"}']
    return [json.dumps({"action": "Final Answer", "action_input": "short answer"})]


def _backend() -> ScriptedBackend:
    return ScriptedBackend(replies=_reply, tokens_per_second=20)


def _run(
    server: LiveServer, text: str, *, on_delta: Callable[[int], None] | None = None, **body: Any
) -> dict[str, Any]:
    """One SSE run to its end; calls `on_delta(n)` after the n-th answer delta."""
    deltas = 0
    text_out = ""
    last: tuple[str, dict[str, Any]] = ("", {})
    with httpx.stream("POST", server.url + "/chat/events", json={"text": text, **body}, timeout=60) as r:
        assert r.status_code == 200, r.read()
        session_id = r.headers["x-session-id"]
        for _, name, data in parse_sse(r.iter_lines()):
            last = (name, data)
            if name == "answer_delta":
                deltas += 1
                text_out += str(data["text"])
                if on_delta is not None:
                    on_delta(deltas)
    return {"session_id": session_id, "end": last[0], "data": last[1], "text": text_out}


def _last_turn(server: LiveServer, session_id: str) -> dict[str, Any]:
    turns: list[dict[str, Any]] = httpx.get(f"{server.url}/sessions/{session_id}", timeout=10).json()["turns"]
    return turns[-1]


def _stored(server: LiveServer, session_id: str, timeout: float = 30) -> dict[str, Any]:
    """The session's last turn once it is no longer `running` (its final write landed)."""
    turn: dict[str, Any] = {}

    def done() -> bool:
        nonlocal turn
        try:
            turn = _last_turn(server, session_id)
        except (httpx.HTTPError, KeyError, ValueError):
            return False
        return turn["status"] != "running"

    assert wait_until(done, timeout=timeout, interval=0.2), f"the turn was never stored: {turn}"
    return turn


def test_a_full_disk_under_sqlite(tmp_path: Path) -> None:
    settings = Settings(db=f"sqlite:///{tmp_path / 'full.db'}", keepalive_s=0.5)
    with LiveServer(create_app(settings, backend=_backend())) as server:
        store = server.app.state.runner.store

        def pragma(sql: str) -> None:
            store._read_sync(lambda conn: conn.execute(sql).fetchall())

        def fill(n: int) -> None:
            if n == 5:
                count = store._read_sync(lambda conn: conn.execute("PRAGMA page_count").fetchone()[0])
                pragma(f"PRAGMA max_page_count = {count}")  # not one page more: the disk is full

        first = _run(server, "short first")
        mid = _run(server, "long answer", session_id=first["session_id"], on_delta=fill)
        # the checkpoints failed and were skipped: the run itself finished
        assert mid["end"] == "run_finished" and mid["text"] == LONG
        assert _last_turn(server, first["session_id"])["status"] == "running"  # its final write waits
        refused = _run(server, "long " + "y" * 20_000, session_id=first["session_id"])
        assert refused["end"] == "error" and refused["data"]["code"] == "storage"
        assert "full" in refused["data"]["message"]
        assert httpx.get(server.url + "/sessions", timeout=10).status_code == 200  # reads still work

        pragma("PRAGMA max_page_count = 1073741823")  # room again
        turn = _stored(server, first["session_id"])
        assert turn["user_text"] == "long answer" and turn["answer"] == LONG and turn["status"] == "complete"
        after = _run(server, "short again", session_id=first["session_id"])  # no restart needed
        assert after["end"] == "run_finished"
        assert _stored(server, first["session_id"])["answer"] == "short answer"
        assert store._read_sync(lambda conn: conn.execute("PRAGMA integrity_check").fetchone()[0]) == "ok"


def test_postgresql_restarted_mid_run(tmp_path: Path) -> None:
    with private_postgres() as pg:
        settings = Settings(db=pg.url, keepalive_s=0.5)
        with LiveServer(create_app(settings, backend=_backend())) as server:
            first = _run(server, "short first")
            restarted = threading.Event()

            def restart(n: int) -> None:
                if n == 5:
                    pg.stop()  # every pooled connection is cut, and the server stays away
                    threading.Thread(target=lambda: (time.sleep(8.0), pg.start(), restarted.set())).start()

            t0 = time.monotonic()
            mid = _run(server, "long answer", session_id=first["session_id"], on_delta=restart)
            # checkpoints skipped, the final write deferred: the run ends while the server is away
            assert time.monotonic() - t0 < 8
            assert not restarted.is_set()
            assert mid["end"] in ("run_finished", "error")
            assert restarted.wait(60)
            turn = _stored(server, first["session_id"])
            assert turn["user_text"] == "long answer"
            if mid["end"] == "run_finished":
                assert turn["status"] == "complete" and turn["answer"] == LONG
            else:
                assert turn["answer"] == mid["data"].get("answer", "")
            after = _run(server, "short again", session_id=first["session_id"])  # the pool recovered
            assert after["end"] == "run_finished"
            assert _stored(server, first["session_id"])["answer"] == "short answer"


def test_a_run_asked_for_while_postgresql_is_down_is_a_503(tmp_path: Path) -> None:
    """The session cannot even be looked up: 503 that says why, before any stream starts."""
    with private_postgres() as pg:
        settings = Settings(db=pg.url, keepalive_s=0.5)
        with LiveServer(create_app(settings, backend=_backend())) as server:
            first = _run(server, "short first")
            pg.stop()
            waits = []
            for path in ("/chat/events", "/chat", "/chat/events", "/chat"):
                body = {"text": "short while down", "session_id": first["session_id"]}
                t0 = time.monotonic()
                down = httpx.post(server.url + path, json=body, timeout=30)
                waits.append(time.monotonic() - t0)
                assert down.status_code == 503 and down.headers["retry-after"] == "1"
                error = down.json()["error"]
                assert error["code"] == "storage_unavailable" and "PostgreSQL" in error["message"]
            # the first waits for a connection (the server may be restarting); then they fail fast
            assert waits[0] < 20 and max(waits[1:]) < 5
            listing = httpx.get(server.url + "/sessions", timeout=30)
            assert listing.status_code == 503 and listing.json()["error"]["code"] == "storage_unavailable"
            pg.start()
            assert _run(server, "short after", session_id=first["session_id"])["end"] == "run_finished"


def test_redis_restarted_mid_run(tmp_path: Path) -> None:
    with private_redis() as rs:

        def worker() -> LiveServer:
            settings = Settings(
                db=f"sqlite:///{tmp_path / 'r.db'}", redis_url=rs.url, redis_prefix="t:", keepalive_s=0.5
            )
            return LiveServer(create_app(settings, backend=_backend())).start()

        a, b = worker(), worker()
        try:
            follower: dict[str, Any] = {}

            def follow(run_id: str) -> None:
                with httpx.stream("GET", f"{b.url}/runs/{run_id}/events", timeout=60) as r:
                    follower["status"] = r.status_code
                    follower["events"] = [name for _, name, _ in parse_sse(r.iter_lines())]

            threads: list[threading.Thread] = []
            run: dict[str, str] = {}

            def kill(n: int) -> None:
                if n == 3:
                    threads.append(threading.Thread(target=follow, args=(run["id"],)))
                    threads[-1].start()
                if n == 8:
                    rs.stop()

            with httpx.stream(
                "POST", a.url + "/chat/events", json={"text": "long answer", "resumable": True}, timeout=60
            ) as r:
                run["id"] = r.headers["x-run-id"]
                events = []
                for _, name, _data in parse_sse(r.iter_lines()):
                    events.append(name)
                    if name == "answer_delta":
                        kill(events.count("answer_delta"))
            assert events[-1] == "run_finished"  # the owner's own stream never needed Redis
            for thread in threads:
                thread.join(30)
                assert not thread.is_alive(), "a follower on the other worker hung"
            assert follower["status"] == 200 and follower["events"][-1] == "error"

            while_down = _run(a, "short while Redis is down", resumable=True)
            assert while_down["end"] == "run_finished"

            rs.start()  # empty: every key is gone; the workers come back without a restart
            worker_key = f"t:worker:{a.app.state.coordinator.worker_id}"

            def back() -> bool:
                import redis

                client = redis.Redis.from_url(rs.url)
                try:
                    return bool(client.exists(worker_key))
                finally:
                    client.close()

            assert wait_until(back, timeout=15), "the heartbeat did not come back"

            def resumable_elsewhere() -> bool:
                with httpx.stream(
                    "POST",
                    a.url + "/chat/events",
                    json={"text": "short after", "resumable": True},
                    timeout=30,
                ) as r:
                    run_id = r.headers["x-run-id"]
                    list(r.iter_lines())
                got = httpx.get(f"{b.url}/runs/{run_id}/events", timeout=10)
                return got.status_code == 200 and "run_finished" in got.text

            assert wait_until(resumable_elsewhere, timeout=20, interval=0.5)
        finally:
            a.stop()
            b.stop()
