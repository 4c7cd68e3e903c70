"""Round-two phases of bench/soak.py (issue 12): the outside attack's numbers, measured on the
server as shipped and, in the same run, on a reference with the protections taken out.

* ``slowclients``: 150 connections without a key each sending 0.98 MB of a 1 MB body, then
  silence; 400 slow-header connections (a byte every 2 s), 50 silent ones and 3,000 half-sent
  heads. Figures: server RSS growth, and how many of those connections the server still
  holds 15 s later. Reference: uvicorn's plain h11 protocol, no `RequestGuard`, no body timeout.
* ``limits``: one key asks for 300 runs at once, another creates sessions as fast as it can
  (2,000 requests from 16 threads). Figures: runs started / refused (429), sessions created /
  refused, `/health` latency meanwhile. Reference: the per-key limits set to 0 (off).
* ``uploads``: six ~990 KB documents attached at once with the embedded model (its real
  tokenizer). Figure: `/health` latency meanwhile (polled every 50 ms). Reference: the
  document route with parsing and tokenizing back on the event loop.

Servers are separate processes (one uvicorn worker, SQLite in a temporary directory).
"""

from __future__ import annotations

import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx

SERVER = r"""
import json, resource, sys, types
import uvicorn
from tokenrelay.config import Settings
from tokenrelay.server.app import create_app
from tokenrelay.testing import ScriptedBackend

cfg = json.loads(sys.argv[1])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
settings = Settings(db="sqlite:///" + cfg["db"], api_keys=frozenset(cfg["keys"]), **cfg["settings"])
backend = None
if cfg["backend"] == "scripted":
    words = ["word "] * 40
    reply = ['{"action": "Final Answer", "action_input": "', *words, '"}']
    backend = ScriptedBackend(replies=[reply], tokens_per_second=8)
app = create_app(settings, backend=backend)
http = "tokenrelay.server.protocol:GuardedH11Protocol"
if cfg["reference"]:
    from tokenrelay.server.guard import RequestGuard
    from tokenrelay.server.routes import documents as routes_documents

    app.user_middleware = [m for m in app.user_middleware if m.cls is not RequestGuard]
    http = "h11"

    async def inline(fn, *args, **kwargs):
        return fn(*args, **kwargs)

    routes_documents.asyncio = types.SimpleNamespace(to_thread=inline)


@app.get("/_soak/rss", include_in_schema=False)
async def rss():
    with open("/proc/self/status") as f:
        status = dict(line.split(":", 1) for line in f)
    return {"rss": int(status["VmRSS"].split()[0]) * 1024}


uvicorn.run(app, host="127.0.0.1", port=cfg["port"], log_level="error", http=http, backlog=8192)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def server(
    *, reference: bool, keys: tuple[str, ...] = (), backend: str = "scripted", **settings: Any
) -> Iterator[str]:
    with tempfile.TemporaryDirectory() as tmp:
        port = _free_port()
        if reference:
            settings = {"body_timeout_s": 1e9, **settings}
        cfg = {"db": f"{tmp}/r2.db", "port": port, "keys": list(keys), "settings": settings,
               "backend": backend, "reference": reference}  # fmt: skip
        proc = subprocess.Popen([sys.executable, "-c", SERVER, json.dumps(cfg)], stderr=subprocess.PIPE)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(
                    "server did not start: " + (proc.stderr.read() if proc.stderr else b"").decode()
                )
            time.sleep(0.2)
        try:
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            if proc.stderr:
                proc.stderr.close()


def _rss(url: str) -> int:
    return int(httpx.get(url + "/_soak/rss", timeout=30).json()["rss"])


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _open(sockets: list[socket.socket]) -> int:
    """How many of `sockets` the server has not closed."""
    still = 0
    for s in sockets:
        s.setblocking(False)
        try:
            while True:
                if not s.recv(65536):
                    break  # closed by the server (after its 408/401, or without a word)
        except BlockingIOError:
            still += 1
        except OSError:
            pass
    return still


# --------------------------------------------------------------------------- slow clients


def _slow_clients(reference: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with server(reference=reference, keys=("k-right",)) as url:
        port = _port(url)
        before = _rss(url)
        bodies: list[socket.socket] = []
        chunk = b"x" * 65536
        for _ in range(150):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(
                b"POST /chat HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: 1000000\r\n\r\n"
            )
            sent = 0
            try:
                s.settimeout(2)
                while sent < 980_000:
                    sent += s.send(chunk[: min(len(chunk), 980_000 - sent)])
            except OSError:
                pass
            bodies.append(s)
        time.sleep(1)
        out["body_rss_mb"] = (_rss(url) - before) / 2**20
        time.sleep(15)
        out["bodies_held"] = _open(bodies)
        for s in bodies:
            s.close()
    with server(reference=reference) as url:
        port = _port(url)
        slow = [socket.create_connection(("127.0.0.1", port)) for _ in range(400)]
        silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(50)]
        half = []
        for _ in range(3000):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Half: ")
            half.append(s)
        stop = threading.Event()

        def trickle() -> None:
            while not stop.is_set():
                for s in slow:
                    try:
                        s.send(b"a")
                    except OSError:
                        pass
                stop.wait(2.0)

        for s in slow:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        thread = threading.Thread(target=trickle, daemon=True)
        thread.start()
        time.sleep(15)
        out["slow_held"], out["silent_held"], out["half_held"] = _open(slow), _open(silent), _open(half)
        t0 = time.monotonic()
        out["health_ok"] = httpx.get(url + "/health", timeout=30).status_code == 200
        out["health_s"] = time.monotonic() - t0
        stop.set()
        thread.join()
        for s in slow + silent + half:
            s.close()
    return out


def run_slow_clients() -> dict[str, Any]:
    return {"shipped": _slow_clients(False), "reference": _slow_clients(True)}


# --------------------------------------------------------------------------- per-key limits


def _poll(url: str, stop: threading.Event, out: list[float]) -> None:
    with httpx.Client(timeout=30) as client:
        while not stop.is_set():
            t0 = time.monotonic()
            client.get(url + "/health")
            out.append(time.monotonic() - t0)
            stop.wait(0.05)


@contextmanager
def _health_latency() -> Iterator[Callable[[str], list[float]]]:
    stop = threading.Event()
    samples: list[float] = []
    threads: list[threading.Thread] = []

    def start(url: str) -> list[float]:
        thread = threading.Thread(target=_poll, args=(url, stop, samples), daemon=True)
        threads.append(thread)
        thread.start()
        return samples

    try:
        yield start
    finally:
        stop.set()
        for thread in threads:
            thread.join()


def _limits(reference: bool) -> dict[str, Any]:
    limits = {"max_runs_per_key": 0, "requests_per_minute_per_key": 0, "max_sessions_per_key": 0}
    with server(reference=reference, keys=("k1", "k2"), **(limits if reference else {})) as url:
        runs: Counter[int] = Counter()
        sessions: Counter[int] = Counter()
        with _health_latency() as poll:
            samples = poll(url)

            def run() -> None:
                with httpx.Client(timeout=60) as client:
                    r = client.post(url + "/chat", json={"text": "q"}, headers={"X-API-Key": "k1"})
                    runs[r.status_code] += 1

            started = time.monotonic()
            threads = [threading.Thread(target=run) for _ in range(300)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            runs_s = time.monotonic() - started

            def create(n: int) -> None:
                with httpx.Client(timeout=60) as client:
                    for _ in range(n):
                        sessions[client.post(url + "/sessions", headers={"X-API-Key": "k2"}).status_code] += 1

            started = time.monotonic()
            threads = [threading.Thread(target=create, args=(125,)) for _ in range(16)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            sessions_s = time.monotonic() - started
        return {
            "runs": dict(runs), "runs_s": runs_s, "sessions": dict(sessions), "sessions_s": sessions_s,
            "health_p50_ms": statistics.median(samples) * 1000, "health_max_ms": max(samples) * 1000,
        }  # fmt: skip


def run_limits() -> dict[str, Any]:
    return {"shipped": _limits(False), "reference": _limits(True)}


# --------------------------------------------------------------------------- uploads


def _document(size: int = 990_000) -> str:
    line = "The quick brown fox jumps over the lazy dog while the server keeps answering. "
    paragraphs = []
    while sum(len(p) + 2 for p in paragraphs) < size:
        paragraphs.append(line * 12)
    return "\n\n".join(paragraphs)[:size]


def _uploads(reference: bool) -> dict[str, Any]:
    document = _document()
    with server(reference=reference, backend="llamacpp") as url:
        ids = [httpx.post(url + "/sessions", timeout=30).json()["id"] for _ in range(6)]
        statuses: list[int] = []
        with _health_latency() as poll:
            time.sleep(0.5)
            samples = poll(url)
            time.sleep(0.5)
            t0 = time.monotonic()

            def upload(session_id: str) -> None:
                body = {"name": "big.md", "content": document}
                r = httpx.put(f"{url}/sessions/{session_id}/document", json=body, timeout=300)
                statuses.append(r.status_code)

            threads = [threading.Thread(target=upload, args=(i,)) for i in ids]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            seconds = time.monotonic() - t0
        return {
            "uploads_ok": statuses.count(200), "seconds": seconds, "health_samples": len(samples),
            "health_p50_ms": statistics.median(samples) * 1000, "health_max_ms": max(samples) * 1000,
        }  # fmt: skip


def run_uploads() -> dict[str, Any]:
    return {"shipped": _uploads(False), "reference": _uploads(True)}


# --------------------------------------------------------------------------- table rows


def rows(figures: dict[str, Any]) -> list[tuple[str, str, str]]:
    out: list[tuple[str, str, str]] = []
    slow = figures.get("slowclients")
    if slow:
        s, r = slow["shipped"], slow["reference"]
        out.append((
            "150 unauthenticated 0.98 MB bodies (keys on): RSS growth, held after 15 s",
            f"{s['body_rss_mb']:.0f} MB, {s['bodies_held']} held (reference: {r['body_rss_mb']:.0f} MB, "
            f"{r['bodies_held']} held)",
            "PASS" if s["bodies_held"] == 0 and s["body_rss_mb"] < 20 else "FAIL",
        ))  # fmt: skip
        out.append((
            "400 slow-header + 50 silent + 3,000 half-sent connections: held after 15 s",
            f"{s['slow_held']} + {s['silent_held']} + {s['half_held']} (reference: {r['slow_held']} + "
            f"{r['silent_held']} + {r['half_held']}); /health meanwhile {s['health_s'] * 1000:.0f} ms",
            "PASS" if s["slow_held"] + s["silent_held"] + s["half_held"] == 0 and s["health_ok"] else "FAIL",
        ))  # fmt: skip
    limits = figures.get("limits")
    if limits:
        s, r = limits["shipped"], limits["reference"]
        ran, refused = s["runs"].get(200, 0), s["runs"].get(429, 0)
        out.append((
            "one key asks for 300 runs at once (max_runs_per_key 32)",
            f"{ran} ran, {refused} got 429; /health p50 {s['health_p50_ms']:.0f} ms, max "
            f"{s['health_max_ms']:.0f} ms (reference, no limits: {r['runs'].get(200, 0)} ran, "
            f"/health max {r['health_max_ms']:.0f} ms)",
            "PASS" if ran and refused and ran + refused == 300 else "FAIL",
        ))  # fmt: skip
        created, limited = s["sessions"].get(201, 0), s["sessions"].get(429, 0)
        out.append((
            "one key creates 2,000 sessions as fast as it can (600 requests/min)",
            f"{created} created, {limited} got 429 in {s['sessions_s']:.1f} s (reference: "
            f"{r['sessions'].get(201, 0)} created in {r['sessions_s']:.1f} s)",
            "PASS" if created <= 600 else "FAIL",
        ))  # fmt: skip
    uploads = figures.get("uploads")
    if uploads:
        s, r = uploads["shipped"], uploads["reference"]
        out.append((
            "six 990 KB documents attached at once (embedded model): /health latency",
            f"p50 {s['health_p50_ms']:.0f} ms, max {s['health_max_ms']:.0f} ms (reference, tokenizing on the "
            f"event loop: p50 {r['health_p50_ms']:.0f} ms, max {r['health_max_ms']:.0f} ms); "
            f"{s['uploads_ok']}/6 attached in {s['seconds']:.1f} s",
            "PASS" if s["health_max_ms"] < 500 and s["uploads_ok"] == 6 else "FAIL",
        ))  # fmt: skip
    return out
