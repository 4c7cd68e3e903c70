"""A resumable run outlives its connection for a short grace period and no longer: a reload or
a dropped connection resumes it, a closed tab stops the model (the tutorial's classic leak).

Against a real uvicorn over a socket, with a paced scripted backend.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from replies import PREFIX
from server_fixture import LiveServer, make_app, wait_until
from tokenrelay.testing import ScriptedBackend


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    servers: list[LiveServer] = []

    def start(backend: ScriptedBackend, **settings: Any) -> LiveServer:
        server = LiveServer(make_app(tmp_path / "tokenrelay.db", backend, **settings)).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def words(n: int) -> list[str]:
    return [f"w{i} " for i in range(n)]


def start_and_leave(http: httpx.Client, server: LiveServer) -> tuple[str, str]:
    """Start a resumable run, read a little of it, and drop the connection."""
    with http.stream("POST", server.url + "/chat/events", json={"text": "go", "resumable": True}) as r:
        run_id, session_id = r.headers["x-run-id"], r.headers["x-session-id"]
        seen = b""
        for chunk in r.iter_raw():
            seen += chunk
            if b"w2 " in seen:
                break
    return run_id, session_id


def turn(http: httpx.Client, server: LiveServer, session_id: str) -> dict[str, Any]:
    return dict(http.get(server.url + f"/sessions/{session_id}").json()["turns"][-1])


def test_an_abandoned_resumable_run_is_cancelled_after_the_grace_period(
    serve: Callable[..., LiveServer],
) -> None:
    backend = ScriptedBackend([[PREFIX, *words(400), '"}']], tokens_per_second=40)  # ~10 s
    server = serve(backend, resume_grace_s=0.5)
    with httpx.Client(timeout=30) as http:
        _, session_id = start_and_leave(http, server)
        left_at = time.monotonic()
        assert wait_until(lambda: backend.calls[-1].abandoned, timeout=5.0), "the model kept running"
        assert time.monotonic() - left_at >= 0.4  # it waited for a resume first
        assert wait_until(lambda: turn(http, server, session_id)["status"] != "running", timeout=5.0)
        stored = turn(http, server, session_id)
        assert stored["status"] == "interrupted" and stored["answer"].startswith("w0 w1 w2 ")


def test_a_run_resumed_within_the_grace_period_finishes(serve: Callable[..., LiveServer]) -> None:
    backend = ScriptedBackend([[PREFIX, *words(60), '"}']], tokens_per_second=40)  # ~1.5 s
    server = serve(backend, resume_grace_s=0.5)
    with httpx.Client(timeout=30) as http:
        run_id, session_id = start_and_leave(http, server)
        time.sleep(0.2)  # a page reload
        resumed = http.get(server.url + f"/runs/{run_id}/events", headers={"Last-Event-ID": "0"})
        frames = [json.loads(line[6:]) for line in resumed.text.split("\n") if line.startswith("data: ")]
        assert frames[-1]["type"] == "run_finished"
        assert frames[-1]["answer"] == "".join(words(60))
        assert not backend.calls[-1].abandoned
        assert turn(http, server, session_id)["status"] == "complete"


def test_a_negative_grace_keeps_abandoned_runs_going(serve: Callable[..., LiveServer]) -> None:
    backend = ScriptedBackend([[PREFIX, *words(40), '"}']], tokens_per_second=80)  # ~0.5 s
    server = serve(backend, resume_grace_s=-1)
    with httpx.Client(timeout=30) as http:
        _, session_id = start_and_leave(http, server)
        assert wait_until(lambda: turn(http, server, session_id)["status"] == "complete", timeout=5.0)
        assert backend.calls[-1].finished
