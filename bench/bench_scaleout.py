"""Scale-out figures: how many concurrent 20 tokens/s streams one and two workers hold with a
p99 inter-token gap <= 75 ms, and what the Redis event log (resumable runs) costs per token.

Servers (each a fresh process tree per configuration):

* ``1w``        one uvicorn worker, no Redis (the single-process default);
* ``1w+redis``  one worker with TOKENRELAY_REDIS_URL set: every run's events are mirrored to a
                Redis stream (what makes runs resumable and cancellable on another worker);
* ``2w+redis``  ``uvicorn.run(factory, workers=2)`` on one port, as ``tokenrelay serve --workers 2
                --redis URL`` runs it: two processes accepting on one shared socket, plus Redis.

The app is ``create_app(settings, backend=ScriptedBackend(...), store=InMemorySessionStore())``
(``tokenrelay serve`` cannot pace the ``scripted:`` backend, so this script builds the same app
itself and hands uvicorn the same kind of factory). The scripted model replies with the JSON
action ``{"action": "Final Answer", "action_input": "..."}`` at 20 tokens/s on an absolute
schedule, one chunk per answer token (see bench_server.py); each stream is POST /chat/events.
Finished runs are forgotten after 3 s and Redis logs expire after 30 s so that long ramps do
not accumulate state.

Load generator: this process, asyncio + raw sockets (bench_server.py's ``_Stream`` protocol:
chunked decoding and SSE frames, per-frame timestamps); streams are ramped in over max(1 s,
streams / 1000 s). A stream's gaps are the times between consecutive answer frames (50 ms
nominal); the p99 is over every gap of every stream. A level holds when p99 gap <= 75 ms with
no errors and no text mismatches.

Capacity: levels ascending until one fails (a failing level is retried once), then two
bisection steps between the last held and the first failed level (quick: coarse levels, no
retries, no bisection). CPU: on-CPU time of the worker processes
(/proc/<pid>/task/*/schedstat) and, when Redis runs on this machine, of redis-server, over the
load window, divided by the tokens delivered; "CPU wait" is the workers' time runnable but
not running (a busy or shared machine). Nothing is pinned: workers, Redis and the load
generator share the machine's CPUs (the client's own CPU share is printed).

Event-log cost: one worker without and with Redis, and two workers with Redis, at a fixed load
(``--cost-streams``), interleaved ``--repeats`` times (medians), printed as ratios to "no Redis"
(issue 14's target: with Redis, CPU per token <= 1.3x the single worker's without it). The
server's Redis event log is what ships: blocking connection pools and one batching writer per
worker (`tokenrelay.runs.redis_log`); earlier versions of this script patched both in from
outside as experiments, before they shipped.

"logs lost" counts batches of run events the server's Redis writer reported failing (its log
lines "writing run logs to Redis failed"): such runs cannot be fully resumed through another
worker, and the "Redis" figures then undercount the cost of whole logs.

Usage:
  python bench/bench_scaleout.py --quick           # < 3 min: coarse levels, no retries
  python bench/bench_scaleout.py                   # finer ramp with bisection and retries, 3 repeats
  python bench/bench_scaleout.py --levels 500,1000,2000 --configs 1w,2w+redis
  python bench/bench_scaleout.py --redis redis://127.0.0.1:6379/0
  python bench/bench_scaleout.py --configs '' --cost-configs 1w,1w+redis --alt-src /work/wt/base/src
                                                   # event-log cost, before/after, one run
Server only (used internally): python bench/bench_scaleout.py --serve --port P --workers N ...
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# the sibling benchmark's load generator (raw-socket SSE client) and helpers
from bench_server import (
    LoadResult,
    _free_port,
    _pct,
    _raise_nofile,
    _Stream,
    json_action_pieces,
    make_tokens,
    server_cpu_s,
)

CONFIGS = ("1w", "1w+redis", "2w+redis")
COST_CONFIGS = ("1w", "1w+redis", "2w+redis")
COST_LABELS = {
    "1w": "no Redis",
    "1w+redis": "Redis event log (resumable)",
    "2w": "2 workers, no Redis",
    "2w+redis": "2 workers + Redis",
}
TPS = 20.0
GAP_LIMIT_MS = 75.0
ENV_KEY = "BENCH_SCALEOUT"
SELF = os.path.abspath(__file__)


# ============================================================================ server process


class _Forget(list):  # type: ignore[type-arg]
    """ScriptedBackend records every call for tests: a leak in a benchmark."""

    def append(self, item: Any) -> None:
        pass


def worker_app() -> Any:
    """The app of one worker (uvicorn factory): configuration from the environment."""
    from tokenrelay.backends.base import TextChunk
    from tokenrelay.config import Settings
    from tokenrelay.memory import InMemorySessionStore
    from tokenrelay.server.app import create_app
    from tokenrelay.testing import ScriptedBackend

    cfg = json.loads(os.environ[ENV_KEY])
    tokens = make_tokens(cfg["tokens"], cfg["token_size"])
    pieces = [TextChunk(p) for p in json_action_pieces(tokens)]
    backend = ScriptedBackend(replies=[pieces], tokens_per_second=cfg["tps"], calls=_Forget())
    settings = Settings(
        model="scripted",
        db="memory://",
        tool_protocol="json",
        max_tokens=100_000,
        redis_url=cfg["redis"] or None,
        redis_prefix=cfg["prefix"],
        event_retention_s=30.0,
    )
    app = create_app(settings, backend=backend, store=InMemorySessionStore())
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(a: Any) -> Any:
        async with inner(a) as state:
            a.state.registry.retention_s = 3.0  # forget finished runs soon: levels do not pile up
            yield state

    app.router.lifespan_context = lifespan
    return app


def serve(args: argparse.Namespace) -> None:
    _raise_nofile()
    import uvicorn

    os.environ[ENV_KEY] = json.dumps(
        {"tokens": args.tokens, "token_size": args.token_size, "tps": TPS, "redis": args.redis_url,
         "prefix": args.prefix}
    )  # fmt: skip
    from tokenrelay.config import Settings
    from tokenrelay.server import _nodelay_shared_socket, uvicorn_options

    # as `tokenrelay serve` runs it: httptools, DrainLoop (uvloop), TCP_NODELAY on a shared socket
    options = uvicorn_options(Settings(model="scripted", log_level="warning"))
    options["backlog"] = 8192
    if args.workers > 1:
        _nodelay_shared_socket()
    run = functools.partial(
        uvicorn.run,
        "bench_scaleout:worker_app",
        factory=True,
        host="127.0.0.1",
        port=args.port,
        workers=args.workers,
        timeout_keep_alive=30,
        **options,
    )
    profile = os.environ.get("BENCH_YAPPI")  # one worker's CPU time by function (pip install yappi)
    if not profile or args.workers > 1:
        run()
        return
    import yappi

    signal.raise_signal = lambda _signum: None  # uvicorn re-raises SIGTERM after its shutdown
    yappi.set_clock_type("cpu")
    yappi.start()
    run()
    yappi.stop()
    name = f"{profile}.{'redis' if args.redis_url else 'plain'}.{os.getpid()}"
    yappi.get_func_stats().save(name, type="pstat")


# ============================================================================ load generator


def children_of(pid: int) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        with contextlib.suppress(OSError), open(f"/proc/{name}/stat") as f:
            if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(name))
    return out


def cpu_of(pids: list[int]) -> float:
    return sched_of(pids)[0]


def sched_of(pids: list[int]) -> tuple[float, float]:
    """(seconds on a CPU, seconds runnable but waiting for a CPU) of these processes."""
    on = wait = 0.0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError):
            a, b = server_cpu_s(pid)
            on += a
            wait += b if b == b else 0.0
    return on, wait


class Redis:
    """A synchronous client for the bench's bookkeeping (pid, connections, cleanup)."""

    def __init__(self, url: str) -> None:
        import redis

        self.client = redis.Redis.from_url(url)
        self.client.ping()
        pid = int(self.client.info("server")["process_id"])
        try:
            with open(f"/proc/{pid}/comm") as f:
                local = "redis" in f.read()
        except OSError:
            local = False
        self.pid = pid if local else None

    def clients(self) -> int:
        return int(self.client.info("clients")["connected_clients"])

    def cleanup(self, prefix: str) -> None:
        keys = list(self.client.scan_iter(match=prefix + "*", count=1000))
        for i in range(0, len(keys), 500):
            self.client.delete(*keys[i : i + 500])


@dataclass
class Server:
    config: str
    port: int
    proc: subprocess.Popen[bytes]
    prefix: str
    log_path: str
    log_seen: int = 0

    def log_tail(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()[-3000:]

    def replication_failures(self) -> int:
        """Failed writes of run events to Redis since the last call: the server's Redis writer
        logs "writing run logs to Redis failed" for each failed batch (retried, then dropped)."""
        with open(self.log_path, "rb") as f:
            f.seek(self.log_seen)
            new = f.read()
        self.log_seen += len(new)
        return new.count(b"to Redis failed")

    @property
    def workers(self) -> int:
        return 2 if self.config.startswith("2w") else 1

    def pids(self) -> list[int]:
        """The processes whose CPU counts: the worker(s), and uvicorn's supervisor if any."""
        return [self.proc.pid, *children_of(self.proc.pid)]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        with contextlib.suppress(OSError):
            os.unlink(self.log_path)


def spawn(cmd: list[str], log_path: str, src: str | None = None) -> subprocess.Popen[bytes]:
    """`src`: a tokenrelay source tree the server imports instead of the installed one."""
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    with open(log_path, "wb") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


async def start_server(config: str, args: argparse.Namespace) -> Server:
    port = _free_port()
    prefix = f"bench:{uuid.uuid4().hex[:8]}:"
    redis_url = args.redis if "redis" in config else ""
    workers = 2 if config.startswith("2w") else 1
    cmd = [sys.executable, SELF, "--serve", "--port", str(port), "--workers", str(workers),
           "--tokens", str(args.tokens), "--token-size", str(args.token_size), "--prefix", prefix,
           "--redis-url", redis_url]  # fmt: skip
    log_path = os.path.join(tempfile.gettempdir(), f"bench_scaleout_{prefix.split(':')[1]}.log")
    src = args.alt_src if config.endswith("@alt") else None
    server = Server(config, port, spawn(cmd, log_path, src), prefix, log_path)
    deadline = time.monotonic() + 60
    seen: set[str] = set()
    while time.monotonic() < deadline:  # ready once every worker has answered /health
        if server.proc.poll() is not None:
            tail = server.log_tail()
            raise RuntimeError(f"{config}: server exited with {server.proc.returncode}:\n{tail}")
        worker = await _get(port, "/health")
        if worker is not None:
            seen.add(worker)
            if len(seen) >= workers:
                return server
            continue
        await asyncio.sleep(0.1)
    server.stop()
    raise RuntimeError(f"{config}: server did not start")


async def _get(port: int, path: str) -> str | None:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return None
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        data = await reader.read()
    except OSError:
        return None
    finally:
        writer.close()
    if not data.startswith(b"HTTP/1.1 200"):
        return None
    body = data.split(b"\r\n\r\n", 1)[1]
    with contextlib.suppress(ValueError, KeyError):
        return str(json.loads(body)["worker"])
    return None


async def run_load(
    server: Server, streams: int, tokens: int, expected: str, redis: Redis | None
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    body = b'{"text":"Tell me about the weather."}'
    head = "POST /chat/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    head += f"Accept: text/event-stream\r\nContent-Length: {len(body)}\r\n\r\n"
    req = head.encode() + body
    res = LoadResult(n=streams)
    all_done = loop.create_future()
    ramp_s = max(1.0, streams / 1000)

    def one_done() -> None:
        res.inflight -= 1
        res.done_count += 1
        if res.done_count >= res.n and not all_done.done():
            all_done.set_result(None)

    async def start_one() -> None:
        res.inflight += 1
        res.max_inflight = max(res.max_inflight, res.inflight)
        t0 = time.monotonic()
        try:
            await loop.create_connection(
                lambda: _Stream(req, True, expected, res, t0, one_done), "127.0.0.1", server.port
            )
        except OSError as exc:
            res.errors[f"connect: {type(exc).__name__}"] += 1
            one_done()

    tasks: set[asyncio.Task[None]] = set()

    def launch() -> None:
        t = loop.create_task(start_one())
        tasks.add(t)
        t.add_done_callback(tasks.discard)

    peak_clients = [0]
    stop = asyncio.Event()

    async def sample_redis() -> None:
        while redis is not None and not stop.is_set():
            with contextlib.suppress(Exception):
                peak_clients[0] = max(peak_clients[0], await asyncio.to_thread(redis.clients))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)

    sampler = loop.create_task(sample_redis())
    pids = server.pids()
    per_worker0 = [cpu_of([p]) for p in pids]
    waiting0 = sched_of(pids)[1]
    redis_pids = [redis.pid] if redis is not None and redis.pid else []
    rcpu0, c0, w0 = cpu_of(redis_pids), os.times(), time.monotonic()
    t_begin = loop.time() + 0.01
    for i in range(streams):
        loop.call_at(t_begin + i * ramp_s / streams, launch)
    try:
        await asyncio.wait_for(all_done, ramp_s + tokens / TPS * 3 + 30)
    except TimeoutError:
        res.errors["timeout"] += res.n - res.done_count
    per_worker1 = [cpu_of([p]) for p in pids]
    waiting1 = sched_of(pids)[1]
    rcpu1, c1, w1 = cpu_of(redis_pids), os.times(), time.monotonic()
    stop.set()
    await sampler
    delivered = res.ok * tokens
    gaps = sorted(res.gaps)
    ttfts = sorted(res.ttfts)
    wall = w1 - w0
    worker_cpu = [b - a for a, b in zip(per_worker0, per_worker1, strict=True)]
    scpu = sum(worker_cpu)
    return {
        "streams": streams,
        "worker_us_tok": scpu / delivered * 1e6 if delivered else float("nan"),
        "redis_us_tok": (rcpu1 - rcpu0) / delivered * 1e6 if delivered and redis_pids else float("nan"),
        "worker_cpu_pct": scpu / wall * 100,
        "worker_split": [round(c / wall * 100) for c in worker_cpu if c > 0.05 * wall] or [0],
        "worker_rqwait_pct": (waiting1 - waiting0) / wall * 100,
        "redis_cpu_pct": (rcpu1 - rcpu0) / wall * 100 if redis_pids else float("nan"),
        "client_cpu_pct": ((c1.user - c0.user) + (c1.system - c0.system)) / wall * 100,
        "gap_p50": _pct(gaps, 50) * 1000,
        "gap_p99": _pct(gaps, 99) * 1000,
        "ttft_p99": _pct(ttfts, 99) * 1000,
        "errors": sum(res.errors.values()),
        "error_kinds": dict(res.errors),
        "mismatches": res.mismatches,
        "redis_clients": peak_clients[0],
        "log_failures": server.replication_failures(),
        "tok_s": delivered / wall,
    }


def held(out: dict[str, Any]) -> bool:
    return bool(out["gap_p99"] <= GAP_LIMIT_MS and out["errors"] == 0 and out["mismatches"] == 0)


def lost_logs(out: dict[str, Any]) -> str:
    return f", {out['log_failures']} runs' Redis logs abandoned" if out["log_failures"] else ""


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _describe(out: dict[str, Any]) -> str:
    split = "+".join(f"{c}" for c in out["worker_split"])
    redis = "" if out["redis_cpu_pct"] != out["redis_cpu_pct"] else f", redis {out['redis_cpu_pct']:.0f}%"
    kinds = f" {out['error_kinds']}" if out["errors"] else ""
    return (
        f"p99 gap {out['gap_p99']:.0f} ms, p99 ttft {out['ttft_p99']:.0f} ms, "
        f"err {out['errors']}{kinds}, mism {out['mismatches']}, workers {split}% "
        f"(+{out['worker_rqwait_pct']:.0f}% waiting for a CPU){redis}, "
        f"client {out['client_cpu_pct']:.0f}%{lost_logs(out)}"
    )


# ============================================================================ scenarios


async def capacity(config: str, args: argparse.Namespace, redis: Redis | None) -> dict[str, Any]:
    expected = "".join(make_tokens(args.tokens, args.token_size))
    server = await start_server(config, args)
    notes: list[str] = []
    results: dict[int, dict[str, Any]] = {}

    async def level(n: int) -> bool:
        for attempt in range(1 + args.retries):
            out = await run_load(server, n, args.tokens, expected, redis if "redis" in config else None)
            ok = held(out)
            notes.append(f"{n}{'' if ok else ' FAIL'}: {_describe(out)}")
            _log(f"  {config:9} {notes[-1]}")
            await asyncio.sleep(1.0)
            if ok or attempt == args.retries:
                results[n] = out
                return ok
        return False

    try:
        _log(f"{config}: warm-up")
        await run_load(server, 50, args.tokens, expected, None)
        best, failed = 0, None
        for n in args.level_list:
            if await level(n):
                best = n
            else:
                failed = n
                break
        for _ in range(args.bisect):
            if failed is None or failed - best <= max(50, best // 10):
                break
            mid = (best + failed) // 2 // 50 * 50 or (best + failed) // 2
            if await level(mid):
                best = mid
            else:
                failed = mid
    finally:
        server.stop()
        if redis is not None:
            with contextlib.suppress(Exception):
                redis.cleanup(server.prefix)
    return {"held": best, "first_failed": failed, "at_held": results.get(best), "notes": notes}


async def event_log_cost(args: argparse.Namespace, redis: Redis) -> dict[str, list[dict[str, Any]]]:
    expected = "".join(make_tokens(args.tokens, args.token_size))
    rows: dict[str, list[dict[str, Any]]] = {config: [] for config in args.cost_configs}
    for r in range(args.repeats):
        order = list(args.cost_configs) if r % 2 == 0 else list(reversed(args.cost_configs))
        for config in order:
            server = await start_server(config, args)
            try:
                await run_load(server, 50, args.tokens, expected, None)  # warm-up
                await asyncio.sleep(0.5)
                out = await run_load(server, args.cost_streams, args.tokens, expected,
                                     redis if "redis" in config else None)  # fmt: skip
            finally:
                server.stop()
                with contextlib.suppress(Exception):
                    redis.cleanup(server.prefix)
            rows[config].append(out)
            _log(
                f"  cost {config:9} rep {r + 1}: worker {out['worker_us_tok']:.1f} us/tok, "
                f"redis {out['redis_us_tok']:.1f} us/tok, {_describe(out)}, "
                f"redis clients {out['redis_clients']}"
            )
    return rows


def _label(config: str) -> str:
    base, _, alt = config.partition("@")
    return COST_LABELS[base] + (" @alt" if alt else "")


def _med(rows: list[dict[str, Any]], key: str) -> float:
    vals = [r[key] for r in rows if r[key] == r[key]]
    return statistics.median(vals) if vals else float("nan")


def _fmt(v: float, spec: str = ".1f") -> str:
    return "-" if v != v else format(v, spec)


def _pct_cell(v: float) -> str:
    return "-" if v != v else f"{v:.0f}%"


def _capacity_row(config: str, c: dict[str, Any]) -> list[str]:
    o = c["at_held"]
    if not o:
        return [config, str(c["held"]), str(c["first_failed"] or "-"), *["-"] * 10]
    redis_on = "redis" in config
    return [
        config, str(c["held"]), str(c["first_failed"] or "-"), _fmt(o["gap_p50"]), _fmt(o["gap_p99"]),
        _fmt(o["ttft_p99"], ".0f"), "+".join(str(x) for x in o["worker_split"]) + "%",
        _pct_cell(o["worker_rqwait_pct"]),
        _pct_cell(o["redis_cpu_pct"]) if redis_on else "-", _pct_cell(o["client_cpu_pct"]),
        _fmt(o["worker_us_tok"]), str(o["redis_clients"]) if redis_on else "-",
        str(o["log_failures"]) if redis_on else "-",
    ]  # fmt: skip


def write_json(path: str, data: Any) -> None:
    with open(path, "w") as f:
        json.dump(data, f, default=str, indent=1)


def _table(hdr: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in [hdr, *rows]) for i in range(len(hdr))]
    for r in [hdr, ["-" * w for w in widths], *rows]:
        cells = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        print("  ".join(cells))


async def main_async(args: argparse.Namespace) -> None:
    t_start = time.monotonic()
    load0 = os.getloadavg()[0]
    redis: Redis | None = None
    try:
        redis = Redis(args.redis)
    except Exception as exc:
        _log(f"no Redis at {args.redis} ({exc}): skipping the configurations with Redis and the event log")
    configs = [c for c in args.configs.split(",") if c and (redis is not None or "redis" not in c)]
    cap: dict[str, dict[str, Any]] = {}
    for config in configs:
        _log(f"capacity {config}: levels {args.level_list}, {args.tokens} tokens x {TPS:g} tok/s per stream")
        cap[config] = await capacity(config, args, redis)
    cost = await event_log_cost(args, redis) if redis is not None and not args.no_cost else None

    # ---- print
    print()
    print(f"bench_scaleout: {os.cpu_count()} CPUs (load average {load0:.1f} at start, "
          f"{os.getloadavg()[0]:.1f} at end), python {platform.python_version()}, "
          "uvicorn as `tokenrelay serve` runs it (httptools, DrainLoop), "
          f"{args.tokens} tokens x {TPS:g} tok/s per stream, token {args.token_size} chars, store memory, "
          f"Redis {args.redis if redis else 'none'}; {time.monotonic() - t_start:.0f} s")  # fmt: skip
    if cap:
        print()
        print(
            f"capacity: concurrent {TPS:g} tok/s streams with p99 gap <= {GAP_LIMIT_MS:g} ms, no errors "
            "(figures at the highest level held; CPU wait = worker time runnable but not running)"
        )
        hdr = ["config", "streams held", "first failed", "gap p50", "gap p99", "TTFT p99", "worker CPU"]
        hdr.append("CPU wait")
        hdr += ["redis CPU", "client CPU", "worker us/tok", "redis conns", "logs lost"]
        rows = [_capacity_row(config, c) for config, c in cap.items()]
        _table(hdr, rows)
        for base in ("1w", "1w+redis"):
            if base in cap and "2w+redis" in cap and cap[base]["held"]:
                ratio = cap["2w+redis"]["held"] / cap[base]["held"]
                print(f"  streams held, 2w+redis / {base}: {ratio:.2f}x")
    if cost:
        print()
        print(
            f"event log cost: {args.cost_streams} streams x {TPS:g} tok/s, "
            f"medians of {args.repeats}; CPU per delivered token"
        )
        hdr = ["", "worker us/tok", "redis us/tok", "total us/tok", "gap p99", "worker CPU", "CPU wait"]
        hdr.append("redis CPU")
        hdr += ["redis conns", "logs lost"]
        rows = []
        for config in cost:
            label = _label(config)
            rs = cost[config]
            w, rd = _med(rs, "worker_us_tok"), _med(rs, "redis_us_tok")
            redis_on = "redis" in config
            redis_cpu = _pct_cell(_med(rs, "redis_cpu_pct")) if redis_on else "-"
            conns = str(max(r["redis_clients"] for r in rs)) if redis_on else "-"
            lost = str(sum(r["log_failures"] for r in rs)) if redis_on else "-"
            total = w + (rd if rd == rd else 0.0)
            gap = _fmt(_med(rs, "gap_p99"))
            worker_cpu = _pct_cell(_med(rs, "worker_cpu_pct"))
            wait = _pct_cell(_med(rs, "worker_rqwait_pct"))
            row = [label, _fmt(w), _fmt(rd), _fmt(total), gap, worker_cpu, wait, redis_cpu, conns, lost]
            rows.append(row)
        _table(hdr, rows)
        ref, *others = list(cost)
        w0 = _med(cost[ref], "worker_us_tok")
        for config in others:
            w1, r1 = _med(cost[config], "worker_us_tok"), _med(cost[config], "redis_us_tok")
            both = f"; worker + redis-server: {(w1 + r1) / w0:.2f}x" if r1 == r1 else ""
            print(f"  CPU per token, {_label(config)} / {_label(ref)}: worker {w1 / w0:.2f}x{both}")
    lost = sum(c["at_held"]["log_failures"] for c in cap.values() if c["at_held"])
    lost += sum(r["log_failures"] for rs in (cost or {}).values() for r in rs)
    if lost:
        print()
        print(
            "note: 'logs lost' counts runs whose Redis event log the server abandoned or never began "
            '(the writer\'s "writing run logs to Redis failed" lines). '
            "Those runs cannot be resumed or cancelled through another worker, and the Redis figures "
            "undercount the cost of complete logs."
        )
    if args.json_out:
        write_json(args.json_out, {"capacity": cap, "cost": cost})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--prefix", default="bench:", help=argparse.SUPPRESS)
    p.add_argument("--redis-url", default="", help=argparse.SUPPRESS)
    p.add_argument(
        "--quick", action="store_true", help="< 3 min: coarse levels, no retries, 60-token streams, 1 repeat"
    )
    p.add_argument(
        "--configs",
        default=",".join(CONFIGS),
        help=f"of {','.join(CONFIGS)} for the capacity section ('': skip it, only the cost section)",
    )
    p.add_argument("--levels", help="concurrent streams to try, ascending (default: 100,250,500,...,4000)")
    p.add_argument("--bisect", type=int, default=2, help="bisection steps after the first failing level")
    p.add_argument("--retries", type=int, default=1, help="retries of a failing level (a noisy machine)")
    p.add_argument("--tokens", type=int, default=100, help="tokens per stream (20 tok/s: 5 s per stream)")
    p.add_argument("--token-size", type=int, default=4, help="characters per token")
    p.add_argument("--cost-streams", type=int, default=200, help="streams of the event-log cost runs")
    p.add_argument("--repeats", type=int, default=3, help="event-log cost runs per configuration (median)")
    p.add_argument("--no-cost", action="store_true", help="skip the event-log cost section")
    p.add_argument(
        "--cost-configs",
        default=",".join(COST_CONFIGS),
        help=f"of {','.join(COST_LABELS)} for the cost section, the first the reference",
    )
    p.add_argument("--redis", default=os.environ.get("TOKENRELAY_REDIS_URL", "redis://127.0.0.1:6379/0"))
    p.add_argument("--json-out", help="also write raw results here")
    p.add_argument(
        "--alt-src",
        help="a tokenrelay source tree (e.g. a git worktree's src): each cost config is run again "
        "importing it, labelled @alt (before/after a change in the same run)",
    )
    args = p.parse_args()
    if args.serve:
        serve(args)
        return
    levels = "100,250,500,750,1000,1250,1500,2000,2500,3000,4000"
    if args.quick:
        levels = "100,200,400,800,1200"
        args.tokens, args.repeats, args.bisect, args.retries = 60, 1, 0, 0
    args.level_list = [int(x) for x in (args.levels or levels).split(",")]
    args.cost_configs = [c for c in args.cost_configs.split(",") if c]
    if unknown := set(args.cost_configs) - set(COST_LABELS):
        p.error(f"unknown --cost-configs {sorted(unknown)}")
    if args.alt_src:
        args.alt_src = os.path.abspath(args.alt_src)
        args.cost_configs += [f"{c}@alt" for c in args.cost_configs]
    _raise_nofile()
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
