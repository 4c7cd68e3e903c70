"""tokenrelay as deployed vs the real limit: a bare Starlette SSE endpoint on uvicorn with
httptools + uvloop (issue 14's table, with ratios to bare from the same run).

Servers (each its own process, one uvicorn worker, started fresh per measurement, pinned to
CPU 1; the load generator, bench_server.py's raw-socket client, on CPU 0):

* ``bare``                  a Starlette endpoint hand-formatting ``data: {...}\\n\\n`` per token,
                            uvicorn ``http="httptools", loop="uvloop"`` (what uvicorn[standard] runs);
* ``tokenrelay``            ``create_app`` + the default SQLite store, served with
                            ``tokenrelay.server.uvicorn_options`` (what ``tokenrelay serve`` runs:
                            httptools, DrainLoop, backlog 4096, no access log) and the garbage
                            collector tuned as ``create_app_from_env`` does; POST /chat/events;
* ``tokenrelay-resumable``  the same server, the web page's request: ``mode: "full"``,
                            ``resumable: true`` (the run is detached, the response follows it);
* ``tokenrelay-h11``        the same app on h11 + asyncio (what a plain ``pip install`` served
                            before httptools and uvloop were dependencies);
* ``tokenrelay-uvloop``     httptools + plain uvloop (no DrainLoop): what DrainLoop fixes;
* ``tokenrelay-memory``     ``tokenrelay`` with the in-memory store: what the SQLite store costs;
* ``tokenrelay-full``       ``mode: "full"`` without ``resumable``: of the page's cost, what its full
                            mode (reasoning deltas too) costs and what its resumable run does;
* ``bare-drain``            bare on DrainLoop;
* ``bare-page``             bare sending, per token and in one write, what the page's request gets:
                            the raw model text as a ``reasoning_delta`` event, then the answer text
                            (the reference for ``tokenrelay-resumable``'s two events per token).

The model is ScriptedBackend replaying the agent's JSON action (``{"action": "Final Answer",
"action_input": "..."}``), answer T tokens (200), split exactly as bare's tokens; the first answer
token is due at once (the model's own time to it is 0), so the TTFT shown is all server (and
connect) time. Figures: server CPU µs per delivered token, tokens/s delivered, p99 gap between
answer frames, p99 TTFT; medians over ``--runs`` (modes interleaved, order rotated per run);
ratios are to bare's median in the same invocation. Capacity: the highest stream count (of
``--capacity-levels``, 20 tok/s, 100 tokens) with p99 gap <= 75 ms and no errors.

Usage:
  python bench/bench_deployed.py --quick            # about 2 min: one run, no capacity search
  python bench/bench_deployed.py --runs 3           # the table, about 12 min
  python bench/bench_deployed.py --modes bare,tokenrelay,tokenrelay-uvloop --scenarios s1000
Server only (internal): python bench/bench_deployed.py --serve MODE --port P --tokens T --tps R
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_server as bs

MODES = (
    "bare",
    "tokenrelay",
    "tokenrelay-resumable",
    "tokenrelay-h11",
    "tokenrelay-uvloop",
    "tokenrelay-memory",
    "tokenrelay-full",
    "bare-drain",
    "bare-page",
)
DEFAULT_MODES = "bare,tokenrelay,tokenrelay-resumable"
SCENARIOS = ("single", "s200", "s1000", "capacity")
QUESTION = b'{"text":"Tell me about the weather."}'
PAGE_REQUEST = b'{"text":"Tell me about the weather.","mode":"full","resumable":true}'
FULL_REQUEST = b'{"text":"Tell me about the weather.","mode":"full"}'


# ============================================================================ server process


def serve(args: argparse.Namespace) -> None:
    bs._pin(bs.SERVER_CPU)
    bs._raise_nofile()
    import uvicorn

    stats = bs.GCStats()
    tokens = bs.make_tokens(args.tokens, args.token_size)
    tps = args.tps or None
    mode: str = args.serve
    options: dict[str, Any]
    if mode.startswith("bare"):
        app = bs.build_bare(tokens, [tps], stats, page=mode == "bare-page")
        options = {"http": "httptools", "loop": "uvloop", "backlog": 4096, "access_log": False}
        if mode == "bare-drain":
            options["loop"] = "tokenrelay.server:event_loop"
    else:
        from tokenrelay.config import Settings
        from tokenrelay.server import uvicorn_options
        from tokenrelay.server.protocol import http_protocol

        # the default store (SQLite, a fresh file), gc tuned after start-up as create_app_from_env does
        store = "memory" if mode == "tokenrelay-memory" else "sqlite"
        app = bs.build_tokenrelay("tokenrelay-json", tokens, tps, store, "both", stats, False)
        options = uvicorn_options(Settings(model="scripted", log_level="warning"))
        if mode == "tokenrelay-h11":
            options.update(http=http_protocol("h11"), loop="asyncio")
        elif mode == "tokenrelay-uvloop":
            options["loop"] = "uvloop"
    options["log_level"] = "warning"
    config = uvicorn.Config(app, host="127.0.0.1", port=args.port, timeout_keep_alive=30, **options)
    profile = os.environ.get("BENCH_PROFILE")  # a file: the server's cProfile stats, written at exit
    if os.environ.get("BENCH_YAPPI"):  # every thread's CPU time, by function (pip install yappi)
        import yappi

        signal.raise_signal = lambda _signum: None
        yappi.set_clock_type("cpu")
        yappi.start()
        uvicorn.Server(config).run()
        yappi.stop()
        yappi.get_func_stats().save(f"{os.environ['BENCH_YAPPI']}.{mode}.{os.getpid()}", type="pstat")
        with open(f"{os.environ['BENCH_YAPPI']}.{mode}.{os.getpid()}.threads", "w") as out:
            yappi.get_thread_stats().print_all(out=out)
        return
    if not profile:
        uvicorn.Server(config).run()
        return
    import cProfile

    signal.raise_signal = lambda _signum: None  # uvicorn re-raises SIGTERM after shutdown: dump first
    with cProfile.Profile() as prof:
        uvicorn.Server(config).run()
    prof.dump_stats(f"{profile}.{mode}.{os.getpid()}")


# ============================================================================ driver


class Server(bs.Server):
    """bench_server's server process, started from this script (its modes and options)."""

    def __init__(self, case: bs.Case, args: argparse.Namespace) -> None:
        self.port = bs._free_port()
        cmd = [sys.executable, os.path.abspath(__file__), "--serve", case.mode, "--port", str(self.port)]
        cmd += [
            "--tokens",
            str(case.tokens),
            "--token-size",
            str(args.token_size),
            "--tps",
            str(case.tps or 0),
        ]
        env = dict(os.environ)
        if case.src:
            env["PYTHONPATH"] = os.pathsep.join(p for p in (case.src, env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(cmd, env=env)


def make_case(label: str, tokens: int, tps: float | None, streams: int, ramp: float, **kw: Any) -> bs.Case:
    """The case of a column: a mode, or `MODE@alt` (that mode importing tokenrelay from --alt-src)."""
    mode, _, alt = label.partition("@")
    bodies = {"tokenrelay-resumable": PAGE_REQUEST, "tokenrelay-full": FULL_REQUEST}
    body = bodies.get(mode, None if mode.startswith("bare") else QUESTION)
    src = ALT_SRC[0] if alt else None
    return bs.Case(mode, tokens, tps, streams, ramp, body=body, src=src, **kw)


#: --alt-src, once parsed
ALT_SRC: list[str] = []


async def run_case(case: bs.Case, args: argparse.Namespace) -> dict[str, Any]:
    server = Server(case, args)
    try:
        await server.wait_ready()
        expected = "".join(bs.make_tokens(case.tokens, args.token_size))
        await bs.http_simple(server.port, "POST", "/_bench/tps", str(bs.FAST_TPS).encode())
        warm = replace(case, tps=bs.FAST_TPS, streams=20, ramp_s=0.05, sequential=1)
        await bs.run_load(server.port, server.proc.pid, warm, expected, 0)
        await bs.http_simple(server.port, "POST", "/_bench/tps", str(case.tps or 0).encode())
        await bs.http_simple(server.port, "POST", "/_bench/collect")
        await asyncio.sleep(0.2)
        return await bs.run_load(server.port, server.proc.pid, case, expected, bs.rss_kb(server.proc.pid))
    finally:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(5)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()


async def scenario(name: str, cases: dict[str, bs.Case], args: argparse.Namespace) -> dict[str, list[Any]]:
    rows: dict[str, list[dict[str, Any]]] = {label: [] for label in cases}
    labels = list(cases)
    for r in range(args.runs):
        for label in labels[r % len(labels) :] + labels[: r % len(labels)]:
            out = await run_case(cases[label], args)
            rows[label].append(out)
            bs._log(
                f"  {name:7} {label:21} run {r + 1}: {out['cpu_us_tok']:6.1f} us/tok  "
                f"{out['tok_s']:7.0f} tok/s  "
                f"gap p99 {out['gap_p99']:6.1f} ms  ttft p99 {out['ttft_p99']:6.1f} ms  "
                f"err {out['errors']} mism {out['mismatches']}  srv {out['server_cpu_pct']:.0f}% "
                f"(+{out['server_rqwait_pct']:.0f}% waiting)  client {out['client_cpu_pct']:.0f}%"
            )
    return rows


async def capacity(mode: str, args: argparse.Namespace) -> int:
    held = 0
    for level in (int(x) for x in args.capacity_levels.split(",")):
        good = False
        for _ in range(2):  # one retry: the machine is noisy
            case = make_case(mode, 100, 20.0, level, max(1.0, level / 1000))
            out = await run_case(case, args)
            good = out["gap_p99"] <= 75 and out["errors"] == 0 and out["mismatches"] == 0
            bs._log(
                f"  capacity {mode:21} {level:5}: gap p99 {out['gap_p99']:.0f} ms, ttft p99 "
                f"{out['ttft_p99']:.0f} ms, err {out['errors']}{'' if good else '  FAIL'}"
            )
            if good:
                break
        if not good:
            break
        held = level
    return held


def _cell(value: float, bare: float | None, spec: str, higher_better: bool = False) -> str:
    if value != value:
        return "-"
    text = format(value, spec)
    if bare is not None and bare == bare and bare:
        ratio = value / bare
        text += f" ({ratio:.2f}x)" if not higher_better else f" ({ratio:.0%})"
    return text


async def main_async(args: argparse.Namespace) -> None:
    modes = args.modes.split(",")
    if ALT_SRC:
        plain = [m for m in modes if not m.startswith("bare") and "@" not in m]
        modes += [f"{m}@alt" for m in plain if f"{m}@alt" not in modes]
    scenarios = args.scenarios.split(",")
    table: list[list[str]] = []
    t0 = time.monotonic()

    def rows_for(title: str, rows: dict[str, list[Any]], metrics: list[tuple[str, str, str, bool]]) -> None:
        for key, label, spec, higher in metrics:
            bare = bs._med(rows["bare"], key) if "bare" in rows else None
            cells = [_cell(bs._med(rows[m], key), None if m == "bare" else bare, spec, higher) for m in modes]
            errs = sum(r["errors"] + r["mismatches"] for m in modes for r in rows[m])
            table.append([f"{title}: {label}", *cells] + ([f"errors {errs}"] if errs else []))

    single_n = args.single_tokens
    if "single" in scenarios:
        bs._log(f"single stream: {single_n} tokens, no delay (one loop turn per token), x{args.single_seq}")
        cases = {m: make_case(m, single_n, bs.FAST_TPS, 1, 0, sequential=args.single_seq) for m in modes}
        rows = await scenario("single", cases, args)
        rows_for("1 stream, no delay", rows, [("cpu_us_tok", "CPU us/token", ".1f", False)])
    for name, streams in (("s200", 200), ("s1000", args.streams)):
        if name not in scenarios:
            continue
        bs._log(f"{streams} streams x 20 tok/s x {args.tokens} tokens, ramp {args.ramp:g} s")
        cases = {m: make_case(m, args.tokens, 20.0, streams, args.ramp) for m in modes}
        rows = await scenario(name, cases, args)
        rows_for(
            f"{streams} x 20 tok/s",
            rows,
            [
                ("cpu_us_tok", "CPU us/token", ".1f", False),
                ("tok_s", "tokens/s delivered", ".0f", True),
                ("gap_p99", "p99 gap ms", ".1f", False),
                ("ttft_p99", "TTFT p99 ms beyond the model's", ".0f", False),
            ],
        )
    if "capacity" in scenarios:
        bs._log(f"capacity: levels {args.capacity_levels} x 20 tok/s x 100 tokens")
        held = {m: await capacity(m, args) for m in modes}
        bare = held.get("bare")
        table.append(
            ["capacity: streams at p99 gap <= 75 ms"]
            + [f"{held[m]}" + (f" ({held[m] / bare:.0%})" if bare and m != "bare" else "") for m in modes]
        )

    import platform

    print()
    print(
        f"bench_deployed: python {platform.python_version()}, one worker pinned to CPU {bs.SERVER_CPU}, "
        f"load generator on CPU {bs.CLIENT_CPU}; T={args.tokens} tokens of {args.token_size} chars; "
        f"medians of {args.runs} run(s); {time.monotonic() - t0:.0f} s"
    )
    hdr = ["scenario", *modes]
    widths = [max(len(r[i]) if i < len(r) else 0 for r in [hdr, *table]) for i in range(len(hdr))]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(hdr, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in table:
        print(
            "| "
            + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=False))
            + " |"
            + " ".join(r[len(hdr) :])
        )
    print("(ratios: to bare's median in this run; x = cost, % = delivered/held relative to bare)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--serve", choices=MODES, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--tps", type=float, default=0, help=argparse.SUPPRESS)
    p.add_argument("--quick", action="store_true", help="one run, shorter single stream, no capacity search")
    p.add_argument("--runs", type=int, default=3, help="runs per case (medians shown)")
    p.add_argument("--modes", default=DEFAULT_MODES, help="of " + ",".join(MODES))
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help="of " + ",".join(SCENARIOS))
    p.add_argument("--tokens", type=int, default=200, help="answer tokens per stream (T)")
    p.add_argument("--token-size", type=int, default=4, help="characters per token")
    p.add_argument("--single-tokens", type=int, default=4000)
    p.add_argument("--single-seq", type=int, default=3, help="sequential streams per single measurement")
    p.add_argument("--streams", type=int, default=1000, help="streams of the s1000 scenario")
    p.add_argument("--ramp", type=float, default=1.0, help="seconds over which streams are started")
    p.add_argument("--capacity-levels", default="1000,1500,2000,2500,3000,3500")
    p.add_argument(
        "--alt-src",
        help="also run every tokenrelay mode importing tokenrelay from this source tree (a column "
        "MODE@alt): before/after a change in the same run",
    )
    args = p.parse_args()
    if args.serve:
        serve(args)
        return
    if args.quick:
        args.runs, args.single_tokens, args.single_seq = 1, 2000, 2
        if "--scenarios" not in sys.argv:
            args.scenarios = "single,s200,s1000"
    if args.alt_src:
        ALT_SRC.append(os.path.abspath(args.alt_src))
    if "bare" not in args.modes.split(","):
        args.modes = "bare," + args.modes
    bs._pin(bs.CLIENT_CPU)
    bs._raise_nofile()
    bs.run_client(main_async(args))


if __name__ == "__main__":
    main()
