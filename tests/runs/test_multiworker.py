"""Beyond one machine: two worker processes on different ports sharing one PostgreSQL and one
Redis — resume on another worker, cancel anywhere, worker death, shared history.

Needs the PostgreSQL (127.0.0.1:5432, trust auth) and Redis (127.0.0.1:6379) this project's
machines run; skipped with the reason when they are missing, except in CI (CI=true), where
`.ci/run` starts them and a missing service is a failure.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from apps.worker import ANSWER
from server_fixture import free_port
from services import REDIS, fresh_database
from sse_frames import parse_sse as _sse

pytestmark = pytest.mark.services


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    with fresh_database("mw") as url:
        yield url


class Worker:
    def __init__(self, db: str, prefix: str, rate: float, log: Path, grace: float = 30.0) -> None:
        self.port = free_port()
        self.log = log.open("wb")
        self.url = f"http://127.0.0.1:{self.port}"
        worker = Path(__file__).resolve().parents[1] / "apps" / "worker.py"
        self.proc = subprocess.Popen(
            [sys.executable, str(worker), "--port", str(self.port), "--db", db, "--redis", REDIS,
             "--prefix", prefix, "--rate", str(rate), "--grace", str(grace)],
            stdout=subprocess.DEVNULL,
            stderr=self.log,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"worker exited: {self.proc.stderr.read().decode() if self.proc.stderr else ''}"
                )
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("worker did not start")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()


@pytest.fixture
def workers(database: str, tmp_path: Path) -> Iterator[tuple[Worker, Worker]]:
    prefix = f"trtest:{uuid.uuid4().hex[:8]}:"
    a = Worker(database, prefix, rate=25, log=tmp_path / "a.log")
    try:
        b = Worker(database, prefix, rate=25, log=tmp_path / "b.log")
    except Exception:
        a.stop()
        raise
    yield a, b
    a.stop()
    b.stop()


def _start(worker: Worker, text: str, *, take: int) -> tuple[str, str, int, str]:
    """Start a resumable run on `worker`, read `take` answer frames, then hang up.
    Returns run id, session id, last event id, text so far."""
    got: list[str] = []
    last_id = -1
    with (
        httpx.Client(timeout=30) as client,
        client.stream(
            "POST", worker.url + "/chat/events", json={"text": text, "resumable": True}
        ) as response,
    ):
        assert response.status_code == 200
        run_id = response.headers["x-run-id"]
        session_id = response.headers["x-session-id"]
        for event_id, name, data in _sse(response.iter_lines()):
            assert event_id is not None
            last_id = event_id
            if name == "answer_delta":
                got.append(str(data["text"]))
                if len(got) >= take:
                    break
    return run_id, session_id, last_id, "".join(got)


def _follow(
    worker: Worker, run_id: str, last_id: int, timeout: float = 30
) -> list[tuple[str, dict[str, object]]]:
    out = []
    headers = {"Last-Event-ID": str(last_id)}
    with (
        httpx.Client(timeout=timeout) as client,
        client.stream("GET", f"{worker.url}/runs/{run_id}/events", headers=headers) as response,
    ):
        assert response.status_code == 200, response.read()
        for event_id, name, data in _sse(response.iter_lines()):
            assert event_id is not None and event_id > last_id, "an event came twice"
            last_id = event_id
            out.append((name, data))
            if name in ("run_finished", "error"):
                break
    return out


def test_history_written_through_a_is_read_through_b(workers: tuple[Worker, Worker]) -> None:
    a, b = workers
    r = httpx.post(a.url + "/chat", json={"text": "remember me", "stream": False}, timeout=60)
    assert r.status_code == 200
    session_id = r.json()["session_id"]
    detail = httpx.get(f"{b.url}/sessions/{session_id}", timeout=10).json()
    assert [t["user_text"] for t in detail["turns"]] == ["remember me"]
    assert detail["turns"][0]["answer"] == ANSWER
    assert detail["turns"][0]["status"] == "complete"


def test_a_run_started_on_a_resumes_on_b_with_exactly_the_rest(workers: tuple[Worker, Worker]) -> None:
    a, b = workers
    run_id, _, last_id, before = _start(a, "resume me", take=5)
    assert before and ANSWER.startswith(before)
    events = _follow(b, run_id, last_id)
    rest = "".join(str(d["text"]) for name, d in events if name == "answer_delta")
    assert events[-1][0] == "run_finished"
    assert before + rest == ANSWER  # no gap, no duplicate
    assert events[-1][1]["answer"] == ANSWER


def test_a_cancel_sent_to_b_stops_the_run_on_a(workers: tuple[Worker, Worker]) -> None:
    a, b = workers
    run_id, session_id, last_id, _ = _start(a, "cancel me", take=2)
    t0 = time.monotonic()
    r = httpx.post(f"{b.url}/runs/{run_id}/cancel", timeout=10)
    assert r.status_code == 202 and r.json()["cancelled"] is True
    events = _follow(a, run_id, last_id, timeout=10)
    assert events[-1][0] == "error" and events[-1][1]["code"] == "cancelled"
    assert time.monotonic() - t0 < 3.0
    detail = httpx.get(f"{b.url}/sessions/{session_id}", timeout=10).json()
    assert detail["turns"][-1]["status"] == "interrupted"
    assert len(detail["turns"][-1]["answer"]) < len(ANSWER)


def test_killing_a_mid_run_gives_b_clients_an_error_event(workers: tuple[Worker, Worker]) -> None:
    a, b = workers
    run_id, session_id, last_id, _ = _start(a, "die midway", take=2)
    a.kill()
    t0 = time.monotonic()
    events = _follow(b, run_id, last_id, timeout=30)
    assert events[-1][0] == "error"
    assert events[-1][1]["code"] == "worker_lost"
    assert time.monotonic() - t0 < 15
    deadline = time.monotonic() + 10
    status = None
    while time.monotonic() < deadline:
        status = httpx.get(f"{b.url}/sessions/{session_id}", timeout=10).json()["turns"][-1]["status"]
        if status != "running":
            break
        time.sleep(0.2)
    assert status == "interrupted"


def test_an_abandoned_run_waits_for_a_follower_on_another_worker(database: str, tmp_path: Path) -> None:
    """The owner cancels a resumable run nobody follows after the grace period, but not one
    that a client follows through another worker (the follow signal goes through Redis)."""
    prefix = f"trtest:{uuid.uuid4().hex[:8]}:"
    a = Worker(database, prefix, rate=25, log=tmp_path / "ga.log", grace=0.5)
    try:
        b = Worker(database, prefix, rate=25, log=tmp_path / "gb.log", grace=0.5)
        try:
            run_id, _, last_id, seen = _start(a, "followed", take=3)
            rest = _follow(b, run_id, last_id)  # ~3 s of answer: far longer than the grace period
            assert rest[-1][0] == "run_finished"
            assert seen + "".join(str(d["text"]) for n, d in rest if n == "answer_delta") == ANSWER

            _, session_id, _, _ = _start(a, "abandoned", take=3)

            def status() -> str:
                turns = httpx.get(f"{b.url}/sessions/{session_id}", timeout=10).json()["turns"]
                return str(turns[-1]["status"])

            deadline = time.monotonic() + 10
            while status() == "running" and time.monotonic() < deadline:
                time.sleep(0.1)
            assert status() == "interrupted"  # cancelled long before its ~3.6 s answer ended
        finally:
            b.stop()
    finally:
        a.stop()
