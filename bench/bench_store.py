"""The SQLite session store under many concurrent streams: CPU per token, checkpoint waits,
full garbage collections (issue 14: the store's writes per turn off the hot path, batched).

    python bench/bench_store.py [--streams 200,1000] [--runs 3] [--tokens 256] [--every 32]
    python bench/bench_store.py --compare /path/to/other/src    # interleaved, with ratios

Each stream does what a run does with its store: `create_session`, `open_turn` (in a tree
before it: `history(answered=True)`, `get_document`, `begin_turn`), then `--tokens` tokens (one
every `--interval` s) with a checkpoint (`update_partial` of the answer so far) every
`--every` tokens, then `finish_turn`. All streams run at once on one event loop, on a fresh database file.

Reported per configuration (median of `--runs` runs, each in a fresh process):

* store CPU µs/token: the process's CPU time (all threads) minus that of the same streams
  without a store, per token;
* checkpoint wait p50 / p99: how long `await update_partial(...)` held the stream;
* full GCs: generation-2 collections during the streams (`gc.callbacks`), and their longest
  pause.

`--compare SRC` runs every configuration with `SRC` (e.g. an export of main's src/) and with
this checkout's src/, alternating run by run (the machine may be shared: alternation spreads
the noise), and prints the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE_SRC = str(Path(__file__).resolve().parent.parent / "src")


class _GcWatch:
    """Counts generation-2 collections and their pauses (via `gc.callbacks`)."""

    def __init__(self) -> None:
        self.full = 0
        self.max_pause_s = 0.0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.full += 1
            self.max_pause_s = max(self.max_pause_s, time.perf_counter() - self._started)


async def _stream(store: Any, args: argparse.Namespace, waits: list[float], i: int) -> int:
    answer = ""
    turn_id = None
    if store is not None:
        s = await store.create_session()
        if hasattr(store, "open_turn"):  # one hop (a tree before it: the four calls)
            opened = await store.open_turn(s.id, run_id=f"r{i}", user_text=f"question {i}", window=10)
            turn_id = opened.turn_id
        else:
            await store.history(s.id, limit=10, answered=True)
            await store.get_document(s.id)
            turn_id = await store.begin_turn(s.id, run_id=f"r{i}", user_text=f"question {i}")
    for n in range(1, args.tokens + 1):
        await asyncio.sleep(args.interval)
        answer += " tok"
        if turn_id is not None and n % args.every == 0:
            started = time.perf_counter()
            await store.update_partial(turn_id, answer)
            waits.append(time.perf_counter() - started)
    if turn_id is not None:
        await store.finish_turn(turn_id, answer=answer, status="complete")
    return args.tokens


async def _one(args: argparse.Namespace, with_store: bool) -> dict[str, float]:
    from tokenrelay.memory import SQLiteSessionStore

    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteSessionStore(Path(tmp) / "bench.db") if with_store else None
        waits: list[float] = []
        watch = _GcWatch()
        gc.collect()
        gc.callbacks.append(watch)
        cpu, wall = time.process_time(), time.perf_counter()
        try:
            tokens = sum(await asyncio.gather(*(_stream(store, args, waits, i) for i in range(args.streams))))
            if store is not None:
                await store.close()  # the queued writes are part of the cost
        finally:
            gc.callbacks.remove(watch)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    waits.sort()

    def pct(q: float) -> float:
        return waits[min(len(waits) - 1, int(q * len(waits)))] if waits else 0.0

    return {
        "cpu_us_per_token": cpu / tokens * 1e6,
        "wall_s": wall,
        "wait_p50_us": pct(0.50) * 1e6,
        "wait_p99_us": pct(0.99) * 1e6,
        "full_gcs": watch.full,
        "max_gc_pause_ms": watch.max_pause_s * 1e3,
    }


def _run_child(src: str, args: argparse.Namespace, streams: int) -> dict[str, float]:
    """One measurement in a fresh process: with the store, and the same streams without."""
    command = [sys.executable, __file__, "--child", "--streams", str(streams)]
    command += ["--tokens", str(args.tokens), "--every", str(args.every), "--interval", str(args.interval)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    out = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    result: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return result


def _child(args: argparse.Namespace) -> None:
    bare = asyncio.run(_one(args, with_store=False))
    stored = asyncio.run(_one(args, with_store=True))
    stored["store_cpu_us_per_token"] = stored["cpu_us_per_token"] - bare["cpu_us_per_token"]
    stored["bare_full_gcs"] = bare["full_gcs"]
    print(json.dumps(stored))


def _median(results: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in results)


def _show(label: str, results: list[dict[str, float]]) -> None:
    full = sum(1 for r in results if r["full_gcs"])
    print(
        f"  {label:>7}: store CPU {_median(results, 'store_cpu_us_per_token'):7.2f} µs/token"
        f" (all {_median(results, 'cpu_us_per_token'):6.2f})"
        f"  checkpoint wait p50 {_median(results, 'wait_p50_us'):8.1f} µs"
        f" p99 {_median(results, 'wait_p99_us'):9.1f} µs"
        f"  runs with a full GC {full}/{len(results)}"
        f" (without a store: {sum(1 for r in results if r['bare_full_gcs'])}/{len(results)})"
        f" (longest pause {max(r['max_gc_pause_ms'] for r in results):.1f} ms)"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", default="200,1000")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--every", type=int, default=32, help="tokens between checkpoints")
    parser.add_argument("--interval", type=float, default=0.02, help="seconds between tokens")
    parser.add_argument("--compare", metavar="SRC", help="another src/ to compare with this one")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        args.streams = int(args.streams)
        _child(args)
        return
    sources = {"before": args.compare, "after": HERE_SRC} if args.compare else {"this": HERE_SRC}
    for streams in (int(n) for n in args.streams.split(",")):
        results: dict[str, list[dict[str, float]]] = {label: [] for label in sources}
        for _ in range(args.runs):
            for label, src in sources.items():
                results[label].append(_run_child(src, args, streams))
        print(f"{streams} streams x {args.tokens} tokens, a checkpoint every {args.every}:")
        for label, got in results.items():
            _show(label, got)
        if args.compare:
            before, after = results["before"], results["after"]
            for key in ("store_cpu_us_per_token", "cpu_us_per_token", "wait_p50_us", "wait_p99_us"):
                ratio = _median(after, key) / max(_median(before, key), 1e-9)
                print(f"    after/before {key}: {ratio:.3g}x")


if __name__ == "__main__":
    main()
