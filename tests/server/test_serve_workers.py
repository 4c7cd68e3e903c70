"""`tokenrelay serve --workers 2` on one host, as a user starts it: the real command in a
subprocess, one port, two uvicorn worker processes sharing a fresh PostgreSQL database and
Redis.

Which worker serves a request: `/health` names its worker (`worker`: the coordinator's id,
`<host>-<pid>-<random>`), and Redis records the worker of every run (`runinfo:<run id>`).
An httpx client with one keep-alive connection stays on the worker that accepted it, which
is how a test talks to "the other worker" on purpose.

Two servers: one on `scripted:<JSON action>` (answers at once, as the issue suggests), one on
`openai:m` with a comma-separated `--base-url` list of two paced fake upstreams (runs that
stay in flight for seconds, to cancel and resume live through the other worker).

Needs PostgreSQL and Redis (see test_multiworker.py): skipped without them, except in CI.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from fake_openai import DONE, FakeOpenAIServer, Reply, Sleep, chunk, sse, text_events, text_reply
from server_fixture import free_port
from services import REDIS, fresh_database
from sse_frames import parse_sse as _sse

pytestmark = pytest.mark.services


ANSWER = 'Two workers, one service: 日本語の答え, "quotes", } braces and a \\ backslash. ' * 3
SCRIPTED = json.dumps({"action": "Final Answer", "action_input": ANSWER}, ensure_ascii=False)
#: the paced upstreams' answer: 60 pieces at 20 per second, about 3 s per run
PACED_WORDS = [f"w{i:02d} " for i in range(60)]
PACED_ANSWER = "".join(PACED_WORDS)


def _tokenrelay_command() -> list[str]:
    exe = shutil.which("tokenrelay", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "tokenrelay.cli"]


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    with fresh_database("sw") as url:
        yield url


class Serve:
    """`tokenrelay serve --workers N ...` in a subprocess (its own process group)."""

    def __init__(self, args: list[str], *, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.prefix = env["TOKENRELAY_REDIS_PREFIX"]
        self.log_path = log
        self.log = log.open("wb")
        self.proc = subprocess.Popen(
            [*_tokenrelay_command(), "serve", "--port", str(self.port), *args],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tokenrelay serve exited: {self.output()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"tokenrelay serve did not answer /health: {self.output()}")

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # the parent stops its workers
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.log.close()

    def run_worker(self, run_id: str) -> str:
        import redis

        worker = redis.Redis.from_url(REDIS).hget(f"{self.prefix}runinfo:{run_id}", "worker")
        assert worker is not None, f"run {run_id} is not in Redis"
        return bytes(worker).decode()

    def pinned(self, count: int = 2, tries: int = 60) -> dict[str, httpx.Client]:
        """`count` clients, each holding one keep-alive connection to a different worker."""
        clients: dict[str, httpx.Client] = {}
        for _ in range(tries):
            client = httpx.Client(base_url=self.url, timeout=30, limits=httpx.Limits(max_connections=1))
            worker = client.get("/health").json()["worker"]
            if worker in clients:
                client.close()
                continue
            clients[worker] = client
            if len(clients) == count:
                return clients
        for client in clients.values():
            client.close()
        raise AssertionError(f"only {len(clients)} distinct workers answered in {tries} connections")

    def client_for(self, worker: str, tries: int = 60) -> httpx.Client:
        """A client whose one keep-alive connection is served by `worker`."""
        for _ in range(tries):
            client = httpx.Client(base_url=self.url, timeout=30, limits=httpx.Limits(max_connections=1))
            if worker_of(client) == worker:
                return client
            client.close()
        raise AssertionError(f"no connection reached worker {worker} in {tries} tries")


def worker_of(client: httpx.Client) -> str:
    worker: str = client.get("/health").json()["worker"]
    return worker


def pid_of(worker: str) -> int:
    return int(worker.rsplit("-", 2)[1])


def parent_pid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def scripted(database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    env = {"TOKENRELAY_REDIS_PREFIX": f"trtest:{uuid.uuid4().hex[:8]}:"}
    log = tmp_path_factory.mktemp("serve") / "scripted.log"
    args = ["--workers", "2", "--redis", REDIS, "--db", database, "--model", "scripted:" + SCRIPTED]
    server = Serve(args, env=env, log=log)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def upstreams() -> Iterator[list[FakeOpenAIServer]]:
    servers = [FakeOpenAIServer(models=["m"]), FakeOpenAIServer(models=["m"])]
    head = '{"action": "Final Answer", "action_input": "'
    for server in servers:
        server.start()
        server.handler = lambda _r: text_reply([head, *PACED_WORDS, '"}'], delay=0.05)
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def paced(
    database: str, upstreams: list[FakeOpenAIServer], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Serve]:
    env = {
        "TOKENRELAY_REDIS_PREFIX": f"trtest:{uuid.uuid4().hex[:8]}:",
        "TOKENRELAY_TOOL_PROTOCOL": "json",  # the JSON action's answer streams token by token
        "TOKENRELAY_KEEPALIVE_S": "0.5",
    }
    log = tmp_path_factory.mktemp("serve") / "paced.log"
    base_urls = ",".join(u.base_url for u in upstreams)
    args = ["--workers", "2", "--redis", REDIS, "--db", database, "--model", "openai:m"]
    args += ["--base-url", base_urls]
    server = Serve(args, env=env, log=log)
    yield server
    server.stop()


def start_run(client: httpx.Client, text: str, *, take: int) -> tuple[str, str, int, str]:
    """Start a resumable run through `client`, read `take` answer frames, hang up.
    Returns run id, session id, last event id, answer text so far."""
    got: list[str] = []
    last_id = -1
    with client.stream("POST", "/chat/events", json={"text": text, "resumable": True}) as response:
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


def follow(
    client: httpx.Client, run_id: str, last_id: int | None, on_delta: Callable[[], None] | None = None
) -> list[tuple[int, str, dict[str, Any]]]:
    headers = {"Last-Event-ID": str(last_id)} if last_id is not None else {}
    out = []
    previous = -1 if last_id is None else last_id
    with client.stream("GET", f"/runs/{run_id}/events", headers=headers) as response:
        assert response.status_code == 200, response.read()
        for event_id, name, data in _sse(response.iter_lines()):
            assert event_id is not None and event_id > previous, "an event came twice"
            previous = event_id
            out.append((event_id, name, data))
            if name == "answer_delta" and on_delta is not None:
                on_delta()
            if name in ("run_finished", "error"):
                break
    return out


def deltas(events: list[tuple[int, str, dict[str, Any]]]) -> str:
    return "".join(str(d["text"]) for _, name, d in events if name == "answer_delta")


# -- one port, two worker processes ----------------------------------------------------------


def test_health_answers_from_two_worker_processes_of_one_server(scripted: Serve) -> None:
    health = httpx.get(scripted.url + "/health", timeout=10).json()
    assert health["status"] == "🤙"
    assert health["model"] == "scripted"
    clients = scripted.pinned(2)
    try:
        pids = {pid_of(worker) for worker in clients}
        assert len(pids) == 2
        for pid in pids:  # uvicorn's workers: children of the one `tokenrelay serve` process
            assert parent_pid(pid) == scripted.proc.pid
    finally:
        for client in clients.values():
            client.close()


def test_many_chats_are_served_by_both_workers_with_whole_answers(scripted: Serve) -> None:
    # a new connection per request ("Connection: close"), as independent clients would open
    client = httpx.Client(base_url=scripted.url, timeout=60, headers={"Connection": "close"})

    def chat(i: int) -> tuple[str, str]:
        if i % 2:
            r = client.post("/chat", json={"text": f"q{i}", "stream": False})
            assert r.status_code == 200, r.text
            return r.json()["run_id"], r.json()["output"]
        with client.stream("POST", "/chat", json={"text": f"q{i}"}) as response:
            assert response.status_code == 200
            return response.headers["x-run-id"], "".join(response.iter_text())

    with client, ThreadPoolExecutor(8) as pool:
        results = list(pool.map(chat, range(40)))
    assert all(output == ANSWER for _, output in results)
    workers = {scripted.run_worker(run_id) for run_id, _ in results}
    assert len(workers) == 2, workers


def test_a_conversation_goes_on_through_either_worker(scripted: Serve) -> None:
    clients = scripted.pinned(2)
    try:
        a, b = clients.values()
        first = a.post("/chat", json={"text": "first", "stream": False}).json()
        second = b.post(
            "/chat", json={"text": "second", "session_id": first["session_id"], "stream": False}
        ).json()
        assert second["session_id"] == first["session_id"]
        assert scripted.run_worker(first["run_id"]) != scripted.run_worker(second["run_id"])
        detail = a.get(f"/sessions/{first['session_id']}").json()
        assert [t["user_text"] for t in detail["turns"]] == ["first", "second"]
        assert all(t["answer"] == ANSWER and t["status"] == "complete" for t in detail["turns"])
    finally:
        for client in clients.values():
            client.close()


def test_a_run_started_through_one_connection_resumes_through_another(scripted: Serve) -> None:
    clients = scripted.pinned(2)
    try:
        (worker_a, a), (worker_b, b) = clients.items()
        run_id, _, last_id, before = start_run(a, "resume me", take=1)
        assert scripted.run_worker(run_id) == worker_a
        assert before and ANSWER.startswith(before)
        assert worker_of(b) == worker_b  # still the other worker's connection
        rest = follow(b, run_id, last_id)
        assert rest[-1][1] == "run_finished"
        assert before + deltas(rest) == ANSWER  # no gap, no duplicate
        # from the start (no Last-Event-ID): everything, run_started first
        everything = follow(b, run_id, None)
        assert everything[0][:2] == (0, "run_started")
        assert deltas(everything) == ANSWER
        assert everything[-1][2]["answer"] == ANSWER
    finally:
        for client in clients.values():
            client.close()


# -- live runs (paced upstreams through `--base-url url1,url2`) ------------------------------


def test_a_live_run_resumes_on_the_other_worker_token_by_token(
    paced: Serve, upstreams: list[FakeOpenAIServer]
) -> None:
    clients = paced.pinned(2)
    try:
        (worker_a, a), (_, b) = clients.items()
        before_counts = [len(u.chat_requests) for u in upstreams]
        run_id, _, last_id, before = start_run(a, "live resume", take=3)
        assert paced.run_worker(run_id) == worker_a
        arrivals: list[float] = []
        rest = follow(b, run_id, last_id, on_delta=lambda: arrivals.append(time.monotonic()))
        assert rest[-1][1] == "run_finished", rest[-1]
        assert before + deltas(rest) == PACED_ANSWER
        # the rest came live, as the owner produced it (not in one lump at the end)
        assert len(arrivals) >= 20
        assert arrivals[-1] - arrivals[0] > 1.0
        # a second run on the same worker goes to the other upstream (round robin is per worker;
        # hanging up closed a's connection, so reach worker A again through a new one)
        again = paced.client_for(worker_a)
        try:
            r = again.post("/chat", json={"text": "second", "stream": False})
        finally:
            again.close()
        assert r.json()["output"] == PACED_ANSWER
        assert paced.run_worker(r.json()["run_id"]) == worker_a
        new = [len(u.chat_requests) - n for u, n in zip(upstreams, before_counts, strict=True)]
        assert new == [1, 1]
    finally:
        for client in clients.values():
            client.close()


def test_a_cancel_through_the_other_worker_stops_the_run_and_its_upstream_request(
    paced: Serve, upstreams: list[FakeOpenAIServer]
) -> None:
    clients = paced.pinned(2)
    try:
        (worker_a, a), (_, b) = clients.items()
        run_id, session_id, last_id, before = start_run(a, "cancel me", take=2)
        assert paced.run_worker(run_id) == worker_a
        request = max((r for u in upstreams for r in u.chat_requests), key=lambda r: r.received_at)
        t0 = time.monotonic()
        r = b.post(f"/runs/{run_id}/cancel")
        assert r.status_code == 202 and r.json()["cancelled"] is True
        events = follow(b, run_id, last_id)
        assert events[-1][1] == "error" and events[-1][2]["code"] == "cancelled"
        assert time.monotonic() - t0 < 3.0
        assert len(before + deltas(events)) < len(PACED_ANSWER)
        # the owner hung up on the model server: generation stopped there too
        assert request.disconnected.wait(3.0)
        detail = b.get(f"/sessions/{session_id}").json()
        assert detail["turns"][-1]["status"] == "interrupted"
    finally:
        for client in clients.values():
            client.close()


def test_every_run_is_logged_whole_with_hundreds_in_flight_at_once(
    paced: Serve, upstreams: list[FakeOpenAIServer]
) -> None:
    """300 runs whose tokens arrive in step (as when many users ask at once): every run's Redis
    log must end with its terminal event, or it cannot be resumed on another worker."""
    import asyncio

    import redis

    head = '{"action": "Final Answer", "action_input": "'
    in_step = time.monotonic() + 3.0  # every stream sends its tokens at the same instants

    def handler(_request: object) -> Reply:
        events = text_events([head, "a ", "b ", "c", '"}'])
        parts: list[Any] = [*events[:2], Sleep(max(0.0, in_step - time.monotonic()))]
        for event in events[2:]:
            parts += [event, Sleep(0.3)]
        return Reply(parts=[*parts, sse(chunk(finish_reason="stop")), DONE])

    previous = [upstream.handler for upstream in upstreams]
    for upstream in upstreams:
        upstream.handler = handler

    async def chats() -> list[str]:
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=None)) as client:

            async def one(i: int) -> str:
                r = await client.post(paced.url + "/chat", json={"text": f"q{i}", "stream": False})
                assert r.status_code == 200 and r.json()["output"] == "a b c"
                return str(r.json()["run_id"])

            return await asyncio.gather(*(one(i) for i in range(300)))

    try:
        run_ids = asyncio.run(chats())
    finally:
        for upstream, before in zip(upstreams, previous, strict=True):
            upstream.handler = before
    time.sleep(1.0)
    r = redis.Redis.from_url(REDIS)
    unfinished = []
    for run_id in run_ids:
        last = r.xrevrange(f"{paced.prefix}run:{run_id}", count=1)
        if not last or json.loads(last[0][1][b"e"])["type"] not in ("run_finished", "error"):
            unfinished.append(run_id)
    assert unfinished == [], f"{len(unfinished)} of {len(run_ids)} runs have an unfinished log in Redis"
    assert r.hlen(f"{paced.prefix}active") == 0


# -- last: it stops the module's scripted server ------------------------------------------------


def test_stopping_serve_stops_every_worker(scripted: Serve) -> None:
    clients = scripted.pinned(2)
    pids = [pid_of(worker) for worker in clients]
    for client in clients.values():
        client.close()
    scripted.stop()  # SIGTERM to `tokenrelay serve`, as a process manager sends it
    assert scripted.proc.returncode == 0, scripted.output()
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(pid) for pid in pids)
