"""examples/nginx/tokenrelay.conf under a real nginx, in front of two real tokenrelay workers
(tests/apps/worker.py: the server on a paced scripted backend) sharing PostgreSQL and Redis.

The example is used as it is: only its upstream addresses and its `listen` port are replaced,
and it is included from a minimal nginx.conf that keeps every path under a temporary prefix
and logs which upstream served each request (`$upstream_addr`, plus the run id a response
named). nginx runs in the foreground (`-g 'daemon off;'`).

Checks: the config is valid; tokens go through nginx as they are made (not buffered);
requests are spread over both workers; a run started through nginx can be resumed and
cancelled through nginx whichever worker nginx picks; a dead worker is skipped.

Skipped when nginx is not installed (`apt-get install nginx`), and, for all but the config
check, when PostgreSQL or Redis is missing (outside CI: see test_multiworker.py).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from apps.worker import ANSWER
from server_fixture import free_port
from services import REDIS, fresh_database
from sse_frames import parse_sse as _sse

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "nginx" / "tokenrelay.conf"
RATE = 25.0  # tokens/s of the workers' scripted model: an answer takes about 4 s


def _find_nginx() -> str | None:
    found = shutil.which("nginx")
    if found:
        return found
    for candidate in ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


NGINX = _find_nginx()
pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt-get install nginx)")


# -- rendering ----------------------------------------------------------------------------------


def render_site(backends: list[str], port: int) -> str:
    """The example with these upstream addresses and this listen port; nothing else changed."""
    text = EXAMPLE.read_text()
    upstream = re.search(r"upstream tokenrelay \{.*?\n\}", text, re.S)
    assert upstream, "the example has no `upstream tokenrelay { }` block"
    lines = re.findall(r"(?m)^\s*server\s+\S+:\d+", upstream.group(0))
    assert len(lines) == len(backends), "the example's upstream should list two hosts"
    block = upstream.group(0)
    for line, address in zip(lines, backends, strict=True):
        block = block.replace(line, re.sub(r"\S+:\d+$", address, line), 1)
    text = text.replace(upstream.group(0), block)
    text, n = re.subn(r"(?m)^(\s*)listen\s+80;", rf"\g<1>listen 127.0.0.1:{port};", text)
    assert n == 1, "the example should `listen 80;` once"
    return text


def render_main(prefix: Path, site: Path) -> str:
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers must reach the temp prefix
    temps = "\n".join(
        f"    {name}_temp_path {prefix}/{name}_temp;"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""{user}worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 512; }}
http {{
    log_format upstreams '$request_method $uri $status $upstream_addr run=$upstream_http_x_run_id';
    access_log {prefix}/access.log upstreams;
{temps}
    include {site};
}}
"""


def write_config(tmp: Path, backends: list[str], port: int) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    site = tmp / "tokenrelay.conf"
    site.write_text(render_site(backends, port))
    main = tmp / "nginx.conf"
    main.write_text(render_main(tmp, site))
    return main


def nginx_command(conf: Path, *extra: str) -> list[str]:
    assert NGINX is not None
    return [NGINX, "-c", str(conf), "-p", str(conf.parent), "-e", str(conf.parent / "error.log"), *extra]


def test_the_example_config_is_valid(tmp_path: Path) -> None:
    conf = write_config(tmp_path, ["127.0.0.1:1", "127.0.0.1:2"], free_port())
    done = subprocess.run(nginx_command(conf, "-t"), capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "syntax is ok" in done.stderr and "test is successful" in done.stderr
    site = "\n".join(line.split("#")[0] for line in (tmp_path / "tokenrelay.conf").read_text().splitlines())
    for setting in ("proxy_buffering off;", "proxy_http_version 1.1;", "proxy_read_timeout 3600s;"):
        assert setting in site
    assert "proxy_ignore_headers" not in site  # X-Accel-Buffering stays honoured
    # tokenrelay refuses unknown Host names: every location must pass the client's on
    locations = re.findall(r"location[^{]*\{(.*?)\n    \}", site, re.S)
    assert locations and all("proxy_set_header Host $host;" in block for block in locations)


# -- two workers behind nginx --------------------------------------------------------------------


class Worker:
    """tests/apps/worker.py in a subprocess (as in test_multiworker.py)."""

    def __init__(self, db: str, prefix: str, log: Path) -> None:
        self.port = free_port()
        self.prefix = prefix
        self.address = f"127.0.0.1:{self.port}"
        self.url = f"http://{self.address}"
        self.log = log.open("wb")
        worker = Path(__file__).resolve().parents[1] / "apps" / "worker.py"
        self.proc = subprocess.Popen(
            [sys.executable, str(worker), "--port", str(self.port), "--db", db, "--redis", REDIS,
             "--prefix", prefix, "--rate", str(RATE)],
            stdout=subprocess.DEVNULL,
            stderr=self.log,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited: {log.read_text(errors='replace')[-2000:]}")
            try:
                response = httpx.get(self.url + "/health", timeout=1)
                if response.status_code == 200:
                    self.id: str = response.json()["worker"]
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("worker did not start")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


class Proxy:
    """nginx in the foreground on the rendered example."""

    def __init__(self, tmp: Path, backends: list[str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.prefix = tmp
        conf = write_config(tmp, backends, self.port)
        self.proc = subprocess.Popen(
            nginx_command(conf, "-g", "daemon off;"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise RuntimeError(f"nginx exited: {err} {self.error_log()}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nginx did not answer: {self.error_log()}")

    def error_log(self) -> str:
        path = self.prefix / "error.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def access(self) -> list[dict[str, str]]:
        """The access log: method, uri, status, upstream (the last address tried), run id."""
        out = []
        for line in (self.prefix / "access.log").read_text().splitlines():
            method, uri, status, rest = line.split(" ", 3)
            upstreams, run = rest.rsplit(" run=", 1)
            out.append(
                {"method": method, "uri": uri, "status": status, "upstream": upstreams.split(", ")[-1],
                 "tried": upstreams, "run": run}
            )  # fmt: skip
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: finish open requests, then exit
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    with fresh_database("nx") as url:
        yield url


@pytest.fixture(scope="module")
def stack(database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proxy, list[Worker]]]:
    tmp = tmp_path_factory.mktemp("nginx")
    prefix = f"trtest:{uuid.uuid4().hex[:8]}:"
    workers: list[Worker] = []
    proxy = None
    try:
        workers.append(Worker(database, prefix, tmp / "a.log"))
        workers.append(Worker(database, prefix, tmp / "b.log"))
        proxy = Proxy(tmp / "prefix", [w.address for w in workers])
        yield proxy, workers
    finally:
        if proxy is not None:
            proxy.stop()
        for worker in workers:
            worker.stop()


def start_run(url: str, text: str, take: int) -> tuple[str, str, int, str]:
    """Start a resumable run, read `take` answer frames, hang up: run id, session, last id, text."""
    got: list[str] = []
    last_id = -1
    with httpx.stream("POST", url + "/chat/events", json={"text": text, "resumable": True}, timeout=30) as r:
        assert r.status_code == 200
        run_id, session_id = r.headers["x-run-id"], r.headers["x-session-id"]
        for event_id, name, data in _sse(r.iter_lines()):
            assert event_id is not None
            last_id = event_id
            if name == "answer_delta":
                got.append(str(data["text"]))
                if len(got) >= take:
                    break
    return run_id, session_id, last_id, "".join(got)


def follow(url: str, run_id: str, last_id: int) -> list[tuple[str, dict[str, Any]]]:
    out = []
    headers = {"Last-Event-ID": str(last_id)}
    with httpx.stream("GET", f"{url}/runs/{run_id}/events", headers=headers, timeout=30) as r:
        assert r.status_code == 200, r.read()
        for event_id, name, data in _sse(r.iter_lines()):
            assert event_id is not None and event_id > last_id, "an event came twice"
            last_id = event_id
            out.append((name, data))
            if name in ("run_finished", "error"):
                break
    return out


def rest_text(events: list[tuple[str, dict[str, Any]]]) -> str:
    return "".join(str(d["text"]) for name, d in events if name == "answer_delta")


def owner_of(worker: Worker, run_id: str) -> str:
    """The id of the worker that runs `run_id` (from the run's record in Redis)."""
    import redis

    owner = redis.Redis.from_url(REDIS).hget(f"{worker.prefix}runinfo:{run_id}", "worker")
    assert owner is not None, f"run {run_id} is not in Redis"
    return bytes(owner).decode()


@pytest.mark.services
def test_requests_through_nginx_reach_both_workers(stack: tuple[Proxy, list[Worker]]) -> None:
    proxy, workers = stack
    seen = {httpx.get(proxy.url + "/health", timeout=10).json()["worker"] for _ in range(6)}
    assert seen == {w.id for w in workers}


@pytest.mark.services
def test_sse_tokens_pass_through_nginx_as_they_are_made(stack: tuple[Proxy, list[Worker]]) -> None:
    proxy, _ = stack
    t0 = time.monotonic()
    arrivals: list[float] = []
    text: list[str] = []
    with httpx.stream("POST", proxy.url + "/chat/events", json={"text": "stream me"}, timeout=30) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for _, name, data in _sse(r.iter_lines()):
            if name == "answer_delta":
                arrivals.append(time.monotonic() - t0)
                text.append(str(data["text"]))
            if name in ("run_finished", "error"):
                assert name == "run_finished", data
                assert data["answer"] == ANSWER
                break
    end = time.monotonic() - t0
    assert "".join(text) == ANSWER
    # about 80 tokens at 25/s: the first arrives long before the last, and they keep coming
    assert len(arrivals) >= 20
    assert end - arrivals[0] > 2.0, (arrivals[0], end)
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
    assert max(gaps) < 1.0, max(gaps)  # no lump held back by a buffer


@pytest.mark.services
def test_plain_text_chat_passes_through_nginx_as_it_is_made(stack: tuple[Proxy, list[Worker]]) -> None:
    proxy, _ = stack
    t0 = time.monotonic()
    arrivals: list[float] = []
    parts: list[str] = []
    with httpx.stream("POST", proxy.url + "/chat", json={"text": "stream me too"}, timeout=30) as r:
        assert r.status_code == 200
        for part in r.iter_text():
            arrivals.append(time.monotonic() - t0)
            parts.append(part)
    assert "".join(parts) == ANSWER
    assert len(arrivals) >= 20
    assert arrivals[-1] - arrivals[0] > 2.0, (arrivals[0], arrivals[-1])


@pytest.mark.services
def test_a_run_resumes_through_nginx_on_either_worker(stack: tuple[Proxy, list[Worker]]) -> None:
    proxy, workers = stack
    run_id, _, last_id, before = start_run(proxy.url, "resume me through nginx", take=3)
    assert before and ANSWER.startswith(before)
    # two resumes at once: nginx hands consecutive requests to alternate workers, so one of
    # them is served by the worker that does not run the answer (from the Redis event log)
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: follow(proxy.url, run_id, last_id), range(2)))
    for events in results:
        assert events[-1][0] == "run_finished"
        assert before + rest_text(events) == ANSWER  # no gap, no duplicate
    resumes = [e for e in proxy.access() if e["uri"] == f"/runs/{run_id}/events"]
    assert {e["upstream"] for e in resumes} == {w.address for w in workers}
    assert all(e["status"] == "200" for e in resumes)


@pytest.mark.services
def test_a_cancel_through_nginx_reaches_the_worker_running_the_answer(
    stack: tuple[Proxy, list[Worker]],
) -> None:
    proxy, workers = stack
    run_id, session_id, last_id, _ = start_run(proxy.url, "cancel me through nginx", take=2)
    r = httpx.post(f"{proxy.url}/runs/{run_id}/cancel", timeout=10)
    assert r.status_code == 202 and r.json()["cancelled"] is True
    events = follow(proxy.url, run_id, last_id)
    assert events[-1][0] == "error" and events[-1][1]["code"] == "cancelled"
    log = proxy.access()
    started = next(e for e in log if e["run"] == run_id and e["uri"] == "/chat/events")
    cancel = next(e for e in log if e["uri"] == f"/runs/{run_id}/cancel")
    owner = next(w for w in workers if w.id == owner_of(workers[0], run_id))
    assert started["upstream"] == owner.address
    assert cancel["upstream"] != owner.address  # the other worker relayed it (Redis pub/sub)
    turns = httpx.get(f"{proxy.url}/sessions/{session_id}", timeout=10).json()["turns"]
    assert turns[-1]["status"] == "interrupted"


# -- last: it stops a worker -----------------------------------------------------------------------


@pytest.mark.services
def test_nginx_skips_a_dead_worker(stack: tuple[Proxy, list[Worker]]) -> None:
    proxy, workers = stack
    dead = workers[1]
    dead.stop(signal.SIGKILL)

    def chat(i: int) -> tuple[int, str]:
        r = httpx.post(proxy.url + "/chat", json={"text": f"still there {i}", "stream": False}, timeout=30)
        return r.status_code, r.json().get("output", "")

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(chat, range(4)))
    assert results == [(200, ANSWER)] * 4
    healths = {httpx.get(proxy.url + "/health", timeout=10).json()["worker"] for _ in range(4)}
    assert healths == {workers[0].id}
    assert "connect() failed" in proxy.error_log()
