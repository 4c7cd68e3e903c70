"""Where a streaming request's CPU goes, in process: POST /chat/events N times through the ASGI app
(no sockets, no HTTP parser), a one-token answer each, with the default SQLite store and the
in-memory one; prints µs per request and, with --profile, the top functions by cumulative time.

This is the per-request cost that makes arrivals queue at 1,000 streams (issue 14's TTFT target);
bench_deployed.py measures the same as deployed (`--scenarios single --single-tokens 1`).

Usage: python bench/profile_request.py [--requests 3000] [--store sqlite|memory] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

BODY = b'{"text":"Tell me about the weather."}'


async def one_request(app: Any, path: str = "/chat/events", body: bytes = BODY) -> bytes:
    sent: list[dict[str, Any]] = []
    given = False

    async def receive() -> dict[str, Any]:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    await app(scope, receive, send)
    assert sent[0]["status"] == 200, sent
    return b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


async def main_async(args: argparse.Namespace) -> None:
    from bench_server import GCStats, build_tokenrelay

    app = build_tokenrelay("tokenrelay-json", ["Hello"], None, args.store, "both", GCStats(), False)
    async with app.router.lifespan_context(app) as state:
        if state:
            app.state._state.update(state)
        out = await one_request(app)
        assert b"run_finished" in out, out
        for _ in range(200):
            await one_request(app)
        prof = cProfile.Profile() if args.profile else None
        started, cpu, main_cpu = time.perf_counter(), time.process_time(), time.thread_time()
        if prof:
            prof.enable()
        for _ in range(args.requests):
            await one_request(app)
        if prof:
            prof.disable()
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        main_cpu = time.thread_time() - main_cpu
        await asyncio.sleep(0.5)
    print(
        f"{args.store}: {args.requests} requests, {wall / args.requests * 1e6:.0f} µs wall, "
        f"{cpu / args.requests * 1e6:.0f} µs CPU per request (all threads; the event loop's "
        f"{main_cpu / args.requests * 1e6:.0f})"
    )
    if prof:
        stats = pstats.Stats(prof)
        stats.sort_stats(args.sort).print_stats(args.top)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=3000)
    p.add_argument("--store", choices=("sqlite", "memory"), default="sqlite")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--sort", default="cumulative")
    p.add_argument("--top", type=int, default=45)
    args = p.parse_args()
    os.chdir(tempfile.gettempdir())
    from bench_server import run_client

    run_client(main_async(args))


if __name__ == "__main__":
    main()
