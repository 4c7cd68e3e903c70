"""tokenrelay's HTTP streaming path vs a bare Starlette SSE endpoint, side by side in one run.

What is compared (each in its own server process, one uvicorn worker, started fresh per case):

* ``bare``              a minimal Starlette app: POST /stream returns a StreamingResponse whose
                        generator yields ``data: {"type":"answer_delta","text":...}\\n\\n`` per token,
                        paced on the same absolute schedule as ScriptedBackend (no agent);
* ``tokenrelay-json``   ``create_app(...)`` + POST /chat/events, ScriptedBackend replying with the
                        tutorial's JSON action ``{"action": "Final Answer", "action_input": "..."}``
                        (the hard path for final-answer extraction);
* ``tokenrelay-plain``  same, native tool protocol with no tools on offer: the content streams as is;
* ``tokenrelay-native`` same, native tool protocol WITH tools on offer (the calculator): what an
                        OpenAI-compatible deployment runs; the answer streams token by token
                        (answer_policy "stream") because no tool-call fragment arrives.

Both sides emit the same answer split into the same N tokens, one chunk (and so one frame when
the reader keeps up) per token: the JSON action's opening ``{"action": ..., "action_input": "``
rides with the first answer token and the closing ``"}`` with the last, so both schedules are
``start + i / rate``. The answer contains Japanese, ``"``, ``}`` and newlines; every stream's
reassembled text is checked for exact equality (and tokenrelay's run_finished.answer too).

Processes: the server is pinned to CPU 1, this process (the load generator) to CPU 0. The load
generator is asyncio (uvloop when importable) + raw sockets (an asyncio.Protocol that parses the
HTTP/1.1 chunked framing and the SSE frames itself); per stream it records the time to the
first answer frame (from the TCP connect), every gap between answer frames (a frame that
carries several coalesced tokens counts as one gap), the reassembled text and errors. New
streams are ramped in evenly over ``--ramp`` seconds (1 s; the capacity search uses max(1 s,
streams / 1000 s)) so connect storms do not dominate the time to first token.

Server CPU = the server's threads' on-CPU time (/proc/<pid>/task/*/schedstat, ns) over the
window from the first connect to the last stream's end, divided by the tokens delivered. Server
RSS per stream = (peak VmRSS sampled every 100 ms - VmRSS after warm-up) / streams in flight.
The server reports its own garbage-collector pauses (gc.callbacks). Each case runs after a
warm-up; the table shows medians over ``--repeats`` (the modes are interleaved per repeat).

Usage:
  python bench/bench_server.py --quick                      # < 2 min
  python bench/bench_server.py                              # everything, < 10 min
  python bench/bench_server.py --scenarios single,s200 --modes bare,tokenrelay-json
  python bench/bench_server.py --gc-tune                    # also tokenrelay with gc.freeze() + gen0 50k
  python bench/bench_server.py --capacity-levels 500,1000,1500,2000,2500,3000
Server only (used internally): python bench/bench_server.py --serve MODE --port P ...
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import json
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time
from array import array
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

MODES = ("bare", "tokenrelay-json", "tokenrelay-plain", "tokenrelay-native")
SCENARIOS = ("single", "s200", "s1000", "capacity")
SERVER_CPU, CLIENT_CPU = 1, 0
FAST_TPS = 1e9  # "as fast as possible" with one event-loop turn per token (see --fast)

# The answer: Japanese, quotes, braces, newlines, a backslash; repeated to the token count.
_BASE = (
    'Streaming works. 東京の天気は晴れ、気温は23度です。 He said "ok" and closed the brace } '
    "then {another}.\nNext line: 「こんにちは」と言った。 Path C:\\tmp, 50% done; ✓ 🚀\n"
)


def make_tokens(n: int, size: int) -> list[str]:
    text = (_BASE * (n * size // len(_BASE) + 2))[: n * size]
    return [text[i : i + size] for i in range(0, n * size, size)]


def json_action_pieces(tokens: list[str]) -> list[str]:
    """The JSON action's raw text, one piece per answer token (escapes never split)."""
    esc = [json.dumps(t, ensure_ascii=False)[1:-1] for t in tokens]
    esc[0] = '{"action": "Final Answer", "action_input": "' + esc[0]
    esc[-1] += '"}'
    return esc


# ============================================================================ server process


class GCStats:
    def __init__(self) -> None:
        self.reset()
        self._t = 0.0
        gc.callbacks.append(self._cb)

    def reset(self) -> None:
        self.count = [0, 0, 0]
        self.total = [0.0, 0.0, 0.0]
        self.max = [0.0, 0.0, 0.0]
        self.over5ms = 0

    def _cb(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._t = time.perf_counter()
            return
        g = info.get("generation", 0)
        dt = (time.perf_counter() - self._t) * 1000
        self.count[g] += 1
        self.total[g] += dt
        self.max[g] = max(self.max[g], dt)
        if dt > 5:
            self.over5ms += 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "total_ms": self.total,
            "max_ms": self.max,
            "over5ms": self.over5ms,
            "tracked": len(gc.get_objects()),
        }


def _pin(cpu: int) -> None:
    with contextlib.suppress(AttributeError, OSError):
        if len(os.sched_getaffinity(0)) >= 2:
            os.sched_setaffinity(0, {cpu})


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))


def _tune_gc(how: str) -> None:
    if how in ("freeze", "both"):
        gc.collect()
        gc.freeze()
    if how in ("threshold", "both"):
        # create_app_from_env's tuning, or another to compare (BENCH_GC_THRESHOLD=10000,100,100)
        thresholds = os.environ.get("BENCH_GC_THRESHOLD", "50000,20,100")
        gc.set_threshold(*(int(v) for v in thresholds.split(",")))


def _bench_routes(
    get_tps: Callable[[], float | None], set_tps: Callable[[float | None], None], stats: GCStats
) -> list[Any]:
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse
    from starlette.routing import Route

    async def tps(request: Request) -> PlainTextResponse:
        value = float((await request.body()) or 0)
        set_tps(value or None)
        return PlainTextResponse(str(get_tps()))

    async def collect(request: Request) -> PlainTextResponse:
        gc.collect()
        stats.reset()
        return PlainTextResponse("ok")

    async def gcstats(request: Request) -> JSONResponse:
        return JSONResponse(stats.as_dict())

    return [
        Route("/_bench/tps", tps, methods=["POST"]),
        Route("/_bench/collect", collect, methods=["POST"]),
        Route("/_bench/gcstats", gcstats),
    ]


def build_bare(tokens: list[str], rate: list[float | None], stats: GCStats, *, page: bool = False) -> Any:
    """The bare reference: a Starlette endpoint hand-formatting one SSE frame per token. With
    `page`, each write carries what the web page's request gets per token instead: the raw model
    text (the JSON action's piece) as a `reasoning_delta` event, then the answer text."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import StreamingResponse
    from starlette.routing import Route

    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    raw = json_action_pieces(tokens) if page else None

    async def stream(request: Request) -> StreamingResponse:
        await request.body()

        async def frames() -> Any:
            tps = rate[0]
            interval = 1.0 / tps if tps else 0.0
            start = time.monotonic()
            for i, tok in enumerate(tokens):
                if interval:
                    delay = start + i * interval - time.monotonic()
                    await asyncio.sleep(delay if delay > 0 else 0)
                frame = "data: " + dumps({"type": "answer_delta", "text": tok}) + "\n\n"
                if raw is not None:
                    reasoning = dumps({"type": "reasoning_delta", "text": raw[i]})
                    frame = "event: reasoning_delta\ndata: " + reasoning + "\n\n" + frame
                yield frame

        return StreamingResponse(frames(), media_type="text/event-stream; charset=utf-8")

    def set_tps(v: float | None) -> None:
        rate[0] = v

    routes = [Route("/stream", stream, methods=["POST"]), *_bench_routes(lambda: rate[0], set_tps, stats)]
    return Starlette(routes=routes)


def build_tokenrelay(
    mode: str,
    tokens: list[str],
    tps: float | None,
    store: str,
    gc_tune: str,
    stats: GCStats,
    str_pieces: bool,
) -> Any:
    from tokenrelay.backends.base import TextChunk
    from tokenrelay.config import Settings
    from tokenrelay.memory import InMemorySessionStore, SQLiteSessionStore
    from tokenrelay.server.app import create_app
    from tokenrelay.testing import ScriptedBackend

    class _Forget(list):  # type: ignore[type-arg]
        """ScriptedBackend keeps every call (messages included) for tests: a leak here."""

        def append(self, item: Any) -> None:
            pass

    plain = mode == "tokenrelay-plain"
    native = plain or mode == "tokenrelay-native"
    pieces: list[Any] = list(tokens) if native else json_action_pieces(tokens)
    if not str_pieces:  # prebuilt (immutable) chunks: the backend allocates nothing per token, as bare
        pieces = [TextChunk(p) for p in pieces]
    backend = ScriptedBackend(replies=[pieces], tokens_per_second=tps, native_tools=native, calls=_Forget())
    if store == "sqlite":
        path = f"/tmp/bench_server_{os.getpid()}.db"
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path + suffix)
        the_store: Any = SQLiteSessionStore(path)
    else:
        the_store = InMemorySessionStore()
    settings = Settings(
        model="scripted", db="memory://", tool_protocol="native" if native else "json", max_tokens=100_000
    )
    app = create_app(settings, backend=backend, store=the_store)

    def set_tps(v: float | None) -> None:
        backend.tokens_per_second = v

    for route in _bench_routes(lambda: backend.tokens_per_second, set_tps, stats):
        app.router.routes.insert(0, route)
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(a: Any) -> Any:
        async with inner(a) as state:
            if plain:  # create_app has no `tools=` hook: no tools on offer, so text streams at once
                a.state.runner.agent.tools = []
                a.state.runner.agent._by_name = {}
            if gc_tune != "off":
                _tune_gc(gc_tune)
            yield state

    app.router.lifespan_context = lifespan
    return app


def serve(args: argparse.Namespace) -> None:
    _pin(SERVER_CPU)
    _raise_nofile()
    import uvicorn

    stats = GCStats()
    tokens = make_tokens(args.tokens, args.token_size)
    tps = args.tps or None
    if args.serve == "bare":
        app = build_bare(tokens, [tps], stats)
        if args.gc_tune != "off":
            _tune_gc(args.gc_tune)
    else:
        app = build_tokenrelay(args.serve, tokens, tps, args.store, args.gc_tune, stats, args.str_pieces)
    http = args.http if args.http != "auto" else ("httptools" if _importable("httptools") else "h11")
    loop = args.loop
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
        http=http,
        loop=loop,
        backlog=8192,
        timeout_keep_alive=30,
    )
    uvicorn.Server(config).run()


def _importable(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True


# ============================================================================ load generator


@dataclass
class LoadResult:
    n: int = 0
    ok: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    mismatches: int = 0
    gaps: array = field(default_factory=lambda: array("d"))  # type: ignore[type-arg]
    ttfts: array = field(default_factory=lambda: array("d"))  # type: ignore[type-arg]
    frames: int = 0
    max_inflight: int = 0
    inflight: int = 0
    done_count: int = 0


class _Stream(asyncio.Protocol):
    """One streamed request on a raw socket: chunked decoding + SSE frames, minimal."""

    def __init__(
        self, req: bytes, tr: bool, expected: str, res: LoadResult, t0: float, done: Callable[[], None]
    ):
        self.req, self.tr, self.expected, self.res, self.t0, self.done_cb = req, tr, expected, res, t0, done
        self.raw = bytearray()
        self.body = bytearray()
        self.head = False
        self.parts: list[str] = []
        self.last = 0.0
        self.finished = False
        self.answer: str | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.req)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        raw = self.raw
        raw += data
        if not self.head:
            i = raw.find(b"\r\n\r\n")
            if i < 0:
                return
            head = bytes(raw[:i]).lower()
            if not head.startswith(b"http/1.1 200") or b"transfer-encoding: chunked" not in head:
                self._end("http " + head[:12].decode(errors="replace"))
                return
            del raw[: i + 4]
            self.head = True
        pos, n, body, eof = 0, len(raw), self.body, False
        while True:
            j = raw.find(b"\r\n", pos)
            if j < 0:
                break
            size = int(raw[pos:j], 16)
            if size == 0:
                eof = True
                break
            if j + size + 4 > n:
                break
            body += raw[j + 2 : j + 2 + size]
            pos = j + size + 4
        del raw[:pos]
        start = 0
        while True:
            k = body.find(b"\n\n", start)
            if k < 0:
                break
            self._frame(body[start:k], now)
            start = k + 2
        del body[:start]
        if eof:
            self._end(None)

    def _frame(self, frame: bytearray, now: float) -> None:
        res = self.res
        if self.tr:
            if b"event: answer_delta\n" in frame:
                text = json.loads(frame[frame.find(b"\ndata: ") + 7 :])["text"]
            elif b"event: run_finished\n" in frame:
                self.answer = json.loads(frame[frame.find(b"\ndata: ") + 7 :])["answer"]
                return
            elif b"event: error\n" in frame:
                res.errors["error event"] += 1
                self.finished = True  # counted
                return
            else:
                return
        elif frame.startswith(b"data: "):
            text = json.loads(frame[6:])["text"]
        else:
            return
        res.frames += 1
        if self.parts:
            res.gaps.append(now - self.last)
        else:
            res.ttfts.append(now - self.t0)
        self.last = now
        self.parts.append(text)

    def _end(self, error: str | None) -> None:
        if self.finished:
            self._close()
            return
        self.finished = True
        res = self.res
        if error is not None:
            res.errors[error] += 1
        else:
            text = "".join(self.parts)
            if text != self.expected or (self.tr and self.answer != self.expected):
                res.mismatches += 1
            else:
                res.ok += 1
        self._close()

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None
        cb, self.done_cb = self.done_cb, None  # type: ignore[assignment]
        if cb is not None:
            cb()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.finished:
            self._end("connection lost" if exc is None else f"connection lost: {type(exc).__name__}")
        elif self.done_cb is not None:
            self._close()


async def http_simple(port: int, method: str, path: str, body: bytes = b"") -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n".encode()
        + body
    )
    data = await reader.read()
    writer.close()
    return data.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in data else b""


def server_cpu_s(pid: int) -> tuple[float, float]:
    """(seconds on a CPU, seconds runnable but waiting for one) of all of `pid`'s threads."""
    on = wait = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                a, b = f.read().split()[:2]
                on += int(a)
                wait += int(b)
        return on / 1e9, wait / 1e9
    except OSError:  # no schedstat: clock ticks (10 ms resolution)
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), float("nan")


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


@dataclass
class Case:
    mode: str
    tokens: int
    tps: float | None
    streams: int
    ramp_s: float
    sequential: int = 1  # streams run one after another (single-stream scenario)
    gc_tune: str = "off"
    src: str | None = None  # a tokenrelay source tree to import instead of the installed one
    path: str | None = None  # the request's path (default: /stream for bare, /chat/events else)
    body: bytes | None = None  # the request's JSON body (default: a question)


async def run_load(port: int, pid: int, case: Case, expected: str, rss_base: int) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    tr = not case.mode.startswith("bare")
    path = case.path or ("/chat/events" if tr else "/stream")
    body = case.body or b'{"text":"Tell me about the weather."}'
    req = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Accept: text/event-stream\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    res = LoadResult(n=case.streams * case.sequential)
    all_done = loop.create_future()
    peak = [rss_base]
    stop_sampling = asyncio.Event()

    async def sample() -> None:
        while not stop_sampling.is_set():
            with contextlib.suppress(OSError):
                peak[0] = max(peak[0], rss_kb(pid))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop_sampling.wait(), 0.1)

    def one_done() -> None:
        res.inflight -= 1
        res.done_count += 1
        if res.done_count >= res.n and not all_done.done():
            all_done.set_result(None)

    async def start_one(done: Callable[[], None]) -> None:
        res.inflight += 1
        res.max_inflight = max(res.max_inflight, res.inflight)
        t0 = time.monotonic()
        try:
            await loop.create_connection(lambda: _Stream(req, tr, expected, res, t0, done), "127.0.0.1", port)
        except OSError as exc:
            res.errors[f"connect: {type(exc).__name__}"] += 1
            done()

    tasks: set[asyncio.Task[None]] = set()

    def launch(done: Callable[[], None] = one_done) -> None:
        t = loop.create_task(start_one(done))
        tasks.add(t)
        t.add_done_callback(tasks.discard)

    sampler = loop.create_task(sample())
    (cpu0, rq0), c0, w0 = server_cpu_s(pid), os.times(), time.monotonic()
    if case.sequential > 1 or case.streams == 1:
        for _ in range(case.sequential):
            fut = loop.create_future()
            n_before = res.done_count
            launch(lambda f=fut: (one_done(), f.done() or f.set_result(None)))  # type: ignore[misc]
            await asyncio.wait_for(fut, 120)
            assert res.done_count == n_before + 1
    else:
        t_begin = loop.time() + 0.01
        for i in range(case.streams):
            loop.call_at(t_begin + i * case.ramp_s / case.streams, launch)
        per_stream = case.tokens / case.tps if case.tps else 5.0
        try:
            await asyncio.wait_for(all_done, case.ramp_s + per_stream * 3 + 30)
        except TimeoutError:
            res.errors["timeout"] += res.n - res.done_count
    (cpu1, rq1), c1, w1 = server_cpu_s(pid), os.times(), time.monotonic()
    stop_sampling.set()
    await sampler
    delivered = res.ok * case.tokens
    gaps = sorted(res.gaps)
    ttfts = sorted(res.ttfts)
    wall = w1 - w0
    return {
        "cpu_us_tok": (cpu1 - cpu0) / delivered * 1e6 if delivered else float("nan"),
        "server_cpu_pct": (cpu1 - cpu0) / wall * 100,
        "server_rqwait_pct": (rq1 - rq0) / wall * 100,
        "client_cpu_pct": ((c1.user - c0.user) + (c1.system - c0.system)) / wall * 100,
        "gap_p50": _pct(gaps, 50) * 1000,
        "gap_p99": _pct(gaps, 99) * 1000,
        "gap_max": (gaps[-1] if gaps else float("nan")) * 1000,
        "ttft_p50": _pct(ttfts, 50) * 1000,
        "ttft_p99": _pct(ttfts, 99) * 1000,
        "errors": sum(res.errors.values()),
        "error_kinds": dict(res.errors),
        "mismatches": res.mismatches,
        "frames_per_stream": res.frames / max(1, res.ok + res.mismatches),
        "rss_kb_stream": (peak[0] - rss_base) / max(1, res.max_inflight),
        "inflight": res.max_inflight,
        "tok_s": delivered / wall,
    }


def _pct(xs: Any, p: float) -> float:
    if not len(xs):
        return float("nan")
    return xs[min(len(xs) - 1, int(len(xs) * p / 100))]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, case: Case, args: argparse.Namespace) -> None:
        self.port = _free_port()
        cmd = [
            sys.executable,
            os.path.abspath(__file__),
            "--serve",
            case.mode,
            "--port",
            str(self.port),
            "--tokens",
            str(case.tokens),
            "--token-size",
            str(args.token_size),
            "--tps",
            str(case.tps or 0),
            "--gc-tune",
            case.gc_tune,
            "--store",
            args.store,
            "--loop",
            args.loop,
            "--http",
            args.http,
        ]
        if args.str_pieces:
            cmd.append("--str-pieces")
        env = dict(os.environ)
        if case.src:
            env["PYTHONPATH"] = os.pathsep.join(p for p in (case.src, env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(cmd, env=env)

    async def wait_ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}")
            try:
                await http_simple(self.port, "GET", "/_bench/gcstats")
                return
            except OSError:
                await asyncio.sleep(0.05)
        raise RuntimeError("server did not start")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def run_case(case: Case, args: argparse.Namespace) -> dict[str, Any]:
    server = Server(case, args)
    try:
        await server.wait_ready()
        expected = "".join(make_tokens(case.tokens, args.token_size))
        # warm-up: every code path once (imports, caches), at full speed
        await http_simple(server.port, "POST", "/_bench/tps", str(FAST_TPS).encode())
        warm = Case(case.mode, case.tokens, FAST_TPS, 20, 0.05)
        await run_load(server.port, server.proc.pid, warm, expected, 0)
        await http_simple(server.port, "POST", "/_bench/tps", str(case.tps or 0).encode())
        await http_simple(server.port, "POST", "/_bench/collect")
        await asyncio.sleep(0.2)
        base = rss_kb(server.proc.pid)
        out = await run_load(server.port, server.proc.pid, case, expected, base)
        out["gc"] = json.loads(await http_simple(server.port, "GET", "/_bench/gcstats"))
        return out
    finally:
        server.stop()


# ============================================================================ scenarios + table


def _med(rows: list[dict[str, Any]], key: str) -> float:
    vals = [r[key] for r in rows if r[key] == r[key]]
    return statistics.median(vals) if vals else float("nan")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


async def scenario_runs(
    name: str, cases: dict[str, Case], repeats: int, args: argparse.Namespace
) -> dict[str, Any]:
    rows: dict[str, list[dict[str, Any]]] = {label: [] for label in cases}
    labels = list(cases)
    for r in range(repeats):
        order = labels[r % len(labels) :] + labels[: r % len(labels)]  # rotate: drift hits all alike
        for label in order:
            out = await run_case(cases[label], args)
            rows[label].append(out)
            _log(
                f"  {name:8} {label:22} rep {r + 1}: {out['cpu_us_tok']:.1f} us/tok  "
                f"p99 gap {out['gap_p99']:.1f} "
                f"ms  p99 ttft {out['ttft_p99']:.1f} ms  err {out['errors']} mism {out['mismatches']} "
                f"client {out['client_cpu_pct']:.0f}%  server {out['server_cpu_pct']:.0f}% "
                f"rq wait {out['server_rqwait_pct']:.0f}%  gc>5ms {out['gc']['over5ms']} "
                f"gc2 max {out['gc']['max_ms'][2]:.1f} ms"
            )
    return rows


async def capacity(
    mode: str, levels: list[int], tokens: int, gc_tune: str, args: argparse.Namespace
) -> tuple[int, list[str]]:
    held = 0
    notes: list[str] = []
    for level in levels:
        ok = False
        for _attempt in range(1 + args.capacity_retries):
            case = Case(mode, tokens, 20.0, level, max(1.0, level / 1000), gc_tune=gc_tune)
            out = await run_case(case, args)
            good = out["gap_p99"] <= 75 and out["errors"] == 0 and out["mismatches"] == 0
            notes.append(
                f"{level}: p99 gap {out['gap_p99']:.0f} ms, p99 ttft {out['ttft_p99']:.0f} ms, "
                f"err {out['errors']}, client {out['client_cpu_pct']:.0f}%, "
                f"server {out['server_cpu_pct']:.0f}% (+{out['server_rqwait_pct']:.0f}% waiting for a CPU)"
                f"{'' if good else ' FAIL'}"
            )
            _log(f"  capacity {mode}{'+gc' if gc_tune != 'off' else ''} {notes[-1]}")
            if good:
                ok = True
                break
        if not ok:
            break
        held = level
    return held, notes


def _fmt(v: float, spec: str = ".1f") -> str:
    return "-" if v != v else format(v, spec)


async def main_async(args: argparse.Namespace) -> None:
    modes = args.modes.split(",")
    scenarios = args.scenarios.split(",")
    gc_label = "tokenrelay-json+gc"
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    table: list[list[str]] = []
    hdr = [
        "scenario",
        "server",
        "CPU us/tok",
        "x bare",
        "gap p50",
        "gap p99",
        "TTFT p99",
        "err",
        "mism",
        "KB/stream",
        "frames/stream",
        "client CPU",
        "srv CPU",
        "srv rq wait",
        "GC >5ms/full",
        "streams/core",
    ]
    t_start = time.monotonic()

    def add_rows(name: str, rows: dict[str, list[dict[str, Any]]], paced: bool = True) -> None:
        bare = _med(rows["bare"], "cpu_us_tok") if "bare" in rows else float("nan")
        for label, rs in rows.items():
            cpu = _med(rs, "cpu_us_tok")
            table.append(
                [
                    name,
                    label,
                    _fmt(cpu),
                    _fmt(cpu / bare, ".2f"),
                    _fmt(_med(rs, "gap_p50")),
                    _fmt(_med(rs, "gap_p99")),
                    _fmt(_med(rs, "ttft_p99")),
                    str(sum(r["errors"] for r in rs)),
                    str(sum(r["mismatches"] for r in rs)),
                    _fmt(_med(rs, "rss_kb_stream"), ".0f") if paced else "-",
                    _fmt(_med(rs, "frames_per_stream"), ".0f"),
                    _fmt(_med(rs, "client_cpu_pct"), ".0f") + "%",
                    _fmt(_med(rs, "server_cpu_pct"), ".0f") + "%",
                    _fmt(_med(rs, "server_rqwait_pct"), ".0f") + "%",
                    f"{_med(rs, 'gc_over5'):.0f}/{_med(rs, 'gc_full'):.0f}",
                    _fmt(1e6 / (cpu * 20), ".0f") if paced else "-",
                ]
            )

    def with_gc(rows: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
        for rs in rows.values():
            for r in rs:
                r["gc_over5"] = r["gc"]["over5ms"]
                r["gc_full"] = r["gc"]["count"][2]
        return rows

    def alt_cases(cases: dict[str, Case]) -> dict[str, Case]:
        """With --alt-src: each tokenrelay case again, importing tokenrelay from that tree."""
        if not args.alt_src:
            return {}
        src = os.path.abspath(args.alt_src)
        return {f"{k}@alt": dataclasses.replace(c, src=src) for k, c in cases.items() if c.mode != "bare"}

    n_single = args.single_tokens
    if "single" in scenarios:
        _log(
            f"single stream, {n_single} tokens as fast as possible ({args.fast}), "
            f"x{args.single_seq} sequential"
        )
        tps = FAST_TPS if args.fast == "yield" else None
        cases = {m: Case(m, n_single, tps, 1, 0, sequential=args.single_seq) for m in modes}
        cases.update(alt_cases(cases))
        results["single"] = with_gc(await scenario_runs("single", cases, args.repeats, args))
        add_rows(f"1 x {n_single} fast", results["single"], paced=False)
    if "s200" in scenarios:
        _log(f"200 streams x 20 tok/s x {args.tokens} tokens")
        cases = {m: Case(m, args.tokens, 20.0, 200, args.ramp) for m in modes}
        cases.update(alt_cases(cases))
        results["s200"] = with_gc(await scenario_runs("s200", cases, args.repeats, args))
        add_rows("200 x 20/s", results["s200"])
    if "s1000" in scenarios:
        _log(f"{args.streams} streams x 20 tok/s x {args.tokens} tokens")
        cases = {m: Case(m, args.tokens, 20.0, args.streams, args.ramp) for m in modes}
        cases.update(alt_cases(cases))
        if args.gc_tune and "tokenrelay-json" in modes:
            cases[gc_label] = Case(
                "tokenrelay-json", args.tokens, 20.0, args.streams, args.ramp, gc_tune="both"
            )
        results["s1000"] = with_gc(await scenario_runs("s1000", cases, args.repeats_1000, args))
        add_rows(f"{args.streams} x 20/s", results["s1000"])
    cap: dict[str, tuple[int, list[str]]] = {}
    if "capacity" in scenarios:
        levels = [int(x) for x in args.capacity_levels.split(",")]
        cap_modes = [m for m in modes if m in args.capacity_modes.split(",")]
        for m in cap_modes:
            _log(f"capacity search {m}: {levels} x 20 tok/s x {args.capacity_tokens} tokens")
            cap[m] = await capacity(m, levels, args.capacity_tokens, "off", args)
        if args.gc_tune and "tokenrelay-json" in cap_modes:
            cap[gc_label] = await capacity("tokenrelay-json", levels, args.capacity_tokens, "both", args)

    # ---- print
    import platform

    print()
    http = args.http if args.http != "auto" else ("httptools" if _importable("httptools") else "h11")
    print(
        f"bench_server: python {platform.python_version()}, uvicorn http={http}, server loop={args.loop}, "
        f"client loop={'uvloop' if _importable('uvloop') else 'asyncio'}, "
        f"store={args.store}, token_size={args.token_size} chars, server pinned to CPU {SERVER_CPU}, "
        f"load generator to CPU {CLIENT_CPU} ({args.ncpu} CPUs); "
        f"ramp {args.ramp:g} s; medians of {args.repeats} (single, 200) / {args.repeats_1000} (1000) runs; "
        f"{time.monotonic() - t_start:.0f} s"
    )
    widths = [max(len(r[i]) for r in [hdr, *table]) for i in range(len(hdr))]

    def line(r: list[str]) -> str:
        cells = (c.rjust(w) if i > 1 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        return "  ".join(cells)

    print(line(hdr))
    print("  ".join("-" * w for w in widths))
    for r in table:
        print(line(r))
    print(
        "(gap/TTFT in ms; KB/stream = server RSS growth per in-flight stream; srv rq wait = time the server "
        "was runnable but waiting for its CPU (other processes); streams/core = 20 tok/s streams that one "
        "core could carry at this CPU/token)"
    )
    if cap:
        print()
        print("capacity (concurrent 20 tok/s streams with p99 gap <= 75 ms, no errors, no mismatches):")
        for m, (held, notes) in cap.items():
            print(f"  {m:22} {held:>6}    [{'; '.join(notes)}]")

    # ---- targets
    print()
    print("targets (tokenrelay, one worker):")

    def verdict(ok: bool) -> str:
        return "MET " if ok else "MISS"

    for scn, label in (("single", "1 stream, fast"), ("s200", "200 x 20/s")):
        if scn in results and "bare" in results[scn]:
            bare = _med(results[scn]["bare"], "cpu_us_tok")
            for m, rs in results[scn].items():
                if m == "bare":
                    continue
                ratio = _med(rs, "cpu_us_tok") / bare
                print(f"  {verdict(ratio <= 1.5)} CPU/token <= 1.5x bare, {label}, {m}: {ratio:.2f}x")
    if "s1000" in results:
        for m, rs in results["s1000"].items():
            if m == "bare":
                continue
            g, t = _med(rs, "gap_p99"), _med(rs, "ttft_p99")
            e, mm = sum(r["errors"] for r in rs), sum(r["mismatches"] for r in rs)
            kb = _med(rs, "rss_kb_stream")
            print(f"  {verdict(g <= 55)} {args.streams} x 20/s p99 gap <= 55 ms, {m}: {g:.1f} ms")
            print(f"  {verdict(t <= 100)} {args.streams} x 20/s p99 TTFT <= 100 ms, {m}: {t:.1f} ms")
            print(
                f"  {verdict(e == 0 and mm == 0)} {args.streams} x 20/s zero errors/mismatches, {m}: {e}/{mm}"
            )
            if args.tokens == 200:
                print(
                    f"  {verdict(kb <= 50)} RSS <= 50 KB/stream at {args.streams} x 200 tokens, {m}: "
                    f"{kb:.0f} KB "
                    f"(bare {_med(results['s1000']['bare'], 'rss_kb_stream'):.0f} KB)"
                    if "bare" in results["s1000"]
                    else f"  {verdict(kb <= 50)} RSS <= 50 KB/stream, {m}: {kb:.0f} KB"
                )
    for m, (held, _) in cap.items():
        if m != "bare":
            bare_held = f" (bare: {cap['bare'][0]})" if "bare" in cap else ""
            print(
                f"  {verdict(held >= 2500)} capacity >= 2,500 streams at p99 gap <= 75 ms, {m}: "
                f"{held}{bare_held}"
            )
    if args.json_out:
        dump = json.dumps({"results": results, "capacity": cap}, default=str, indent=1)
        await asyncio.to_thread(_write, args.json_out, dump)


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--serve", choices=MODES, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--tps", type=float, default=0, help=argparse.SUPPRESS)
    p.add_argument(
        "--quick", action="store_true", help="a quick run (< 2 min): fewer repeats and tokens, no capacity"
    )
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help="of " + ",".join(SCENARIOS))
    p.add_argument("--modes", default=",".join(MODES), help="of " + ",".join(MODES))
    p.add_argument("--repeats", type=int, default=3, help="runs per case of single and s200 (median shown)")
    p.add_argument("--repeats-1000", type=int, default=2)
    p.add_argument("--tokens", type=int, default=200, help="tokens per stream in s200/s1000")
    p.add_argument("--token-size", type=int, default=4, help="characters per token")
    p.add_argument("--single-tokens", type=int, default=4000)
    p.add_argument(
        "--single-seq", type=int, default=5, help="sequential streams per single-stream measurement"
    )
    p.add_argument(
        "--fast",
        choices=("yield", "burst"),
        default="yield",
        help="single stream: 'yield' = one event-loop turn per token, like a real backend (tps 1e9); "
        "'burst' = tokens_per_second=None (no await between tokens)",
    )
    p.add_argument("--streams", type=int, default=1000, help="streams of the s1000 scenario")
    p.add_argument("--ramp", type=float, default=1.0, help="seconds over which streams are started")
    p.add_argument("--capacity-levels", default="500,1000,1500,2000,2500,3000")
    p.add_argument("--capacity-modes", default="bare,tokenrelay-json")
    p.add_argument("--capacity-tokens", type=int, default=100)
    p.add_argument(
        "--capacity-retries", type=int, default=1, help="retries of a failing level (noisy machine)"
    )
    p.add_argument(
        "--gc-tune",
        nargs="?",
        const="both",
        default="off",
        choices=("off", "freeze", "threshold", "both"),
        help="with --serve: tune gc in the server; else: also run tokenrelay-json with gc.freeze() "
        "after startup + gen0 threshold 50,000 (s1000 and capacity)",
    )
    p.add_argument("--store", choices=("memory", "sqlite"), default="memory")
    p.add_argument(
        "--alt-src",
        help="also run every tokenrelay case with this tokenrelay source tree first on PYTHONPATH "
        "(e.g. a patched copy: /tmp/trcopy/src), labelled @alt",
    )
    p.add_argument(
        "--str-pieces",
        action="store_true",
        help="ScriptedBackend replies as str pieces (it then allocates a TextChunk per token) instead "
        "of prebuilt TextChunks",
    )
    p.add_argument(
        "--loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="the server's event loop (plain uvloop accepts one connection per loop turn, so new "
        "connections waited seconds for their first byte under 1,000 ramped streams, bare included; "
        "tokenrelay serve uses DrainLoop: see bench_deployed.py)",
    )
    p.add_argument(
        "--http",
        choices=("auto", "httptools", "h11"),
        default="auto",
        help="the server's HTTP parser (auto: httptools when importable)",
    )
    p.add_argument("--json-out", help="also write raw results here")
    args = p.parse_args()
    if args.serve:
        serve(args)
        return
    if args.quick:
        args.repeats, args.repeats_1000 = 1, 1
        args.single_tokens, args.single_seq = 2000, 3
        args.scenarios = (
            ",".join(s for s in args.scenarios.split(",") if s != "capacity")
            if "--scenarios" not in sys.argv
            else args.scenarios
        )
    args.gc_tune = args.gc_tune != "off"
    args.ncpu = len(os.sched_getaffinity(0))
    _pin(CLIENT_CPU)
    _raise_nofile()
    run_client(main_async(args))


def run_client(main: Coroutine[Any, Any, None]) -> None:
    """Run a load generator's main coroutine on uvloop (the client must not be the bottleneck),
    or on asyncio where uvloop is not installed."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


if __name__ == "__main__":
    main()
