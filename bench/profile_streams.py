"""Many concurrent paced streams through the ASGI app, in process (no sockets, no HTTP parser):
CPU per token and the garbage collector's young collections (count, total, longest), for the
bare endpoint and for tokenrelay (in-memory store by default), so what concurrency costs shows
without the network's noise. `--young` prints what the first collection under load found young
(by type): what stays alive long enough to be walked.

This is how round seven found that each answer token left one tracked object alive per run
(bench/README.md, bench_deployed section).

Usage: python bench/profile_streams.py [--streams 1000] [--tokens 200] [--tps 20] [--mode bare|tokenrelay]
       [--store memory|sqlite] [--young]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gc
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from profile_request import BODY, one_request


async def main_async(args: argparse.Namespace) -> None:
    from bench_server import GCStats, build_bare, build_tokenrelay, make_tokens

    stats = GCStats()
    tokens = make_tokens(args.tokens, 4)
    if args.mode == "bare":
        app: Any = build_bare(tokens, [args.tps], stats)
        path, body = "/stream", b"{}"
    else:
        app = build_tokenrelay("tokenrelay-json", tokens, args.tps, args.store, "both", stats, False)
        path, body = "/chat/events", BODY
    young: list[int] = [0]

    def first_young(phase: str, info: dict[str, int]) -> None:
        loaded = gc.get_threshold()[0] == 50_000  # tuned: the load is on
        if args.young and loaded and phase == "start" and info["generation"] == 0 and young[0] < 1:
            young[0] += 1
            kinds = collections.Counter(type(o).__qualname__ for o in gc.get_objects(generation=0))
            print(f"young at a collection: {sum(kinds.values())}: {kinds.most_common(12)}")

    gc.callbacks.append(first_young)
    async with app.router.lifespan_context(app) as state:
        if state:
            app.state._state.update(state)
        await asyncio.gather(*(one_request(app, path, body) for _ in range(min(args.streams, 20))))
        for _ in range(args.repeats):
            stats.reset()
            cpu, wall = time.process_time(), time.perf_counter()
            await asyncio.gather(*(one_request(app, path, body) for _ in range(args.streams)))
            cpu_us = (time.process_time() - cpu) / (args.streams * args.tokens) * 1e6
            print(
                f"{args.mode} {args.streams} x {args.tps:g} tok/s x {args.tokens}: "
                f"{cpu_us:.2f} µs/token CPU, "
                f"{time.perf_counter() - wall:.1f} s; young collections {stats.count[0]} "
                f"({stats.total[0]:.0f} ms, longest {stats.max[0]:.1f} ms, {stats.over5ms} over 5 ms), "
                f"older {stats.count[1]}/{stats.count[2]}"
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=("bare", "tokenrelay"), default="tokenrelay")
    p.add_argument("--store", choices=("memory", "sqlite"), default="memory")
    p.add_argument("--streams", type=int, default=1000)
    p.add_argument("--tokens", type=int, default=200)
    p.add_argument("--tps", type=float, default=20.0)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--young", action="store_true", help="what the first collection under load found young")
    args = p.parse_args()
    import uvloop

    uvloop.run(main_async(args))


if __name__ == "__main__":
    main()
