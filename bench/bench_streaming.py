"""Does the agent's answer stream token by token on every surface? (issue 11's acceptance)

A fake OpenAI-compatible upstream (tests/fake_openai.py: uvicorn over a real socket) streams an
answer of N pieces, DELAY apart, with tools on offer; tokenrelay runs as a real uvicorn server
with the real OpenAI-compatible backend (and as the `tokenrelay ask` command). For each surface
and tool protocol it prints how many pieces arrived (vs the upstream's), when the first arrived
after the upstream sent its first content piece, and whether the text was byte-exact.
Targets: pieces >= 90% of the upstream's, first piece within 100 ms, exact.

    python bench/bench_streaming.py [--pieces 60] [--delay 0.02] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "e2e"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from test_streaming_e2e import SURFACES

from fake_openai import FakeOpenAIServer, text_reply
from server_fixture import LiveServer, make_app
from tokenrelay.backends.openai_compat import OpenAIBackend

Result = tuple[int, float, bool]  # pieces received, first piece after the upstream's (s), exact
BASE = ['He said "hi" ', "{braces} ", "\\ back\nslash ", "日本語の", "テキスト ", "🎉👍🏽 "]


def http_case(
    upstream: FakeOpenAIServer, server: LiveServer, surface: str, pieces: list[str], delay: float
) -> Result:
    upstream.enqueue(text_reply(pieces, delay=delay))
    path, body, extract = SURFACES[surface]
    got: list[tuple[float, str]] = []
    with httpx.Client(timeout=60) as http, http.stream("POST", server.url + path, json=body) as response:
        for raw in response.iter_raw():
            text = extract(raw)
            if text:
                got.append((time.monotonic(), text))
    first_sent = upstream.chat_requests[-1].sent_at[1]
    exact = "".join(t for _, t in got) == "".join(pieces)
    return len(got), got[0][0] - first_sent if got else float("inf"), exact


def cli_case(
    upstream: FakeOpenAIServer, protocol: str, pieces: list[str], delay: float
) -> tuple[int, float, bool]:
    upstream.enqueue(text_reply(pieces, delay=delay))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOKENRELAY_", "OPENAI_"))} | {
        "OPENAI_BASE_URL": upstream.base_url,
        "OPENAI_API_KEY": "sk-bench",
        "TOKENRELAY_DB": "memory://",
        "PYTHONIOENCODING": "utf-8",
    }
    command = [sys.executable, "-m", "tokenrelay.cli", "ask", "talk", "--model", "openai:fake-model",
               "--tool-protocol", protocol]  # fmt: skip
    got: list[tuple[float, bytes]] = []
    with subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env
    ) as process:
        assert process.stdout is not None
        while data := os.read(process.stdout.fileno(), 65536):
            got.append((time.monotonic(), data))
    first_sent = upstream.chat_requests[-1].sent_at[1]
    exact = b"".join(d for _, d in got).decode() == "".join(pieces) + "\n"
    return len(got), got[0][0] - first_sent if got else float("inf"), exact


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--pieces", type=int, default=60)
    parser.add_argument("--delay", type=float, default=0.02)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    pieces = (BASE * (args.pieces // len(BASE) + 1))[: args.pieces]
    rows: list[tuple[str, str, list[Result]]] = []
    with FakeOpenAIServer() as upstream, tempfile.TemporaryDirectory() as tmp:
        for protocol in ("native", "json"):
            backend = OpenAIBackend("fake-model", base_url=upstream.base_url, api_key="sk-bench")
            app: Any = make_app(Path(tmp) / f"{protocol}.db", backend, tool_protocol=protocol)
            with LiveServer(app) as server:
                for surface in SURFACES:
                    results = [
                        http_case(upstream, server, surface, pieces, args.delay) for _ in range(args.repeats)
                    ]
                    rows.append((surface, protocol, results))
                server.run_in_loop(backend.aclose())
            results = [cli_case(upstream, protocol, pieces, args.delay) for _ in range(args.repeats)]
            rows.append(("CLI (tokenrelay ask)", protocol, results))
    print(f"upstream: {args.pieces} pieces, {args.delay * 1000:.0f} ms apart, tools on offer; "
          f"median of {args.repeats} runs")  # fmt: skip
    print(f"{'surface':<24} {'protocol':<8} {'pieces':>7} {'ratio':>6} {'first piece':>12} {'exact':>6}")
    for surface, protocol, results in rows:
        count = statistics.median(r[0] for r in results)
        first_ms = statistics.median(r[1] for r in results) * 1000
        exact = all(r[2] for r in results)
        ratio = count / args.pieces
        print(f"{surface:<24} {protocol:<8} {count:>7.0f} {ratio:>6.2f} {first_ms:>9.1f} ms {exact!s:>6}")


if __name__ == "__main__":
    main()
