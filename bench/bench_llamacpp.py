"""Embedded llama.cpp backend vs calling llama-cpp-python directly, in the same process and run.

Requirement: the backend's tokens/s is at least 95% of the direct call's on the same prompt and
settings, and its time to first token within 5 ms of it. Four paths are timed, interleaved
round by round (the order rotates each round so drift hits every path alike):

* direct      `Llama.create_chat_completion(..., stream=True)` iterated in a plain loop;
* direct_b    the same again on a second `Llama` (an A/A control: how far two identical paths
              differ on this machine, the noise floor of every ratio below);
* backend     `LlamaCppBackend.stream(...)` consumed by the asyncio loop (worker thread + queue);
* stream_chat `tokenrelay.run.stream_chat(...)` over the same backend (the full event path).

`--runs N` repeats the whole measurement N times and reports the paired medians of every run
and their median and range: one run of a few rounds on a shared 2-core machine swings by
several percent, in either direction, for identical paths.

Each path has the same model file, n_ctx, threads, prompt, max_tokens and sampling (greedy:
temperature 0; top_k 40, top_p 0.95, min_p 0.05, repeat_penalty 1.0 as create_chat_completion
defaults). Per call: TTFT = start to first non-empty text; decode tok/s = (chunks - 1) /
(t_last - t_first) (one chunk per token for the plain English output, checked); overall tok/s =
chunks / (t_last - start), prompt evaluation included.

KV cache: `--prompt-cache cold` (default) clears each Llama's cache before every call, so every
call evaluates the whole prompt; `warm` repeats one prompt, so every call reuses the cached
prompt (llama-cpp-python then re-evaluates only its last token). Either way each path does the
same work. Threads: the backend's own choice (`backends/machine.py`) unless `--threads N`; the
direct paths always get the same numbers. Usage:
python bench/bench_llamacpp.py [--rounds 7] [--runs 1] [--max-tokens 128] [--threads N]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from tokenrelay.backends.base import FinishChunk, GenerationSettings, TextChunk
from tokenrelay.backends.llamacpp import LlamaCppBackend, default_model_path
from tokenrelay.events import AnswerDelta, RunFinished
from tokenrelay.messages import Message
from tokenrelay.run import stream_chat

PATHS = ("direct", "direct_b", "backend", "stream_chat")
TOP_K, TOP_P, MIN_P, REPEAT_PENALTY = 40, 0.95, 0.05, 1.0


@dataclass(frozen=True)
class Sample:
    ttft_ms: float
    decode_tps: float
    overall_tps: float
    chunks: int
    text: str
    times: tuple[float, ...] = ()


def sample(start: float, times: Sequence[float], parts: Sequence[str]) -> Sample:
    if not times:
        return Sample(float("nan"), float("nan"), float("nan"), 0, "")
    decode = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else float("nan")
    return Sample(
        ttft_ms=(times[0] - start) * 1000,
        decode_tps=decode,
        overall_tps=len(times) / (times[-1] - start),
        chunks=len(times),
        text="".join(parts),
        times=tuple(times),
    )


def prompt_for(round_no: int, cache: str) -> str:
    if cache == "warm":
        return "Write a short story about a lighthouse keeper and a storm."
    return f"Write a short story about lighthouse keeper number {round_no + 1} and a storm."


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        from llama_cpp import Llama

        self.args = args
        path = default_model_path()
        self.backend = LlamaCppBackend(n_ctx=args.n_ctx, n_threads=args.threads)
        threads = self.backend.threads  # the direct path gets exactly the backend's threads
        self.directs = {
            name: Llama(
                model_path=str(path),
                n_ctx=args.n_ctx,
                n_threads=threads.decode,
                n_threads_batch=threads.batch,
                verbose=False,
            )
            for name in ("direct", "direct_b")
        }
        self.settings = GenerationSettings(max_tokens=args.max_tokens, temperature=0.0, top_p=TOP_P)
        self.prompt_tokens = 0

    async def ours(self) -> Any:
        model = await self.backend.load()
        for _ in range(1000):  # the last job posted its FinishChunk; let its worker settle (<1 s)
            if not model.busy:
                break
            await asyncio.sleep(0.001)
        return model.llama

    def run_direct(self, prompt: str, name: str = "direct") -> Sample:
        direct = self.directs[name]
        if self.args.prompt_cache == "cold":
            direct.reset()
        times: list[float] = []
        parts: list[str] = []
        start = time.perf_counter()
        stream = direct.create_chat_completion(
            [{"role": "user", "content": prompt}],
            stream=True,
            max_tokens=self.args.max_tokens,
            temperature=0.0,
            top_k=TOP_K,
            top_p=TOP_P,
            min_p=MIN_P,
            repeat_penalty=REPEAT_PENALTY,
        )
        for chunk in stream:
            content = chunk["choices"][0]["delta"].get("content")
            if content:
                times.append(time.perf_counter())
                parts.append(content)
        return sample(start, times, parts)

    async def run_backend(self, prompt: str) -> Sample:
        llama = await self.ours()
        if self.args.prompt_cache == "cold":
            llama.reset()
        times: list[float] = []
        parts: list[str] = []
        start = time.perf_counter()
        stream = self.backend.stream([Message.user(prompt)], settings=self.settings)
        async with aclosing(stream):
            async for chunk in stream:
                if type(chunk) is TextChunk and chunk.text:
                    times.append(time.perf_counter())
                    parts.append(chunk.text)
                elif isinstance(chunk, FinishChunk) and chunk.usage:
                    self.prompt_tokens = chunk.usage.prompt_tokens
        return sample(start, times, parts)

    async def run_stream_chat(self, prompt: str) -> Sample:
        llama = await self.ours()
        if self.args.prompt_cache == "cold":
            llama.reset()
        times: list[float] = []
        parts: list[str] = []
        start = time.perf_counter()
        events = stream_chat(self.backend, [Message.user(prompt)], settings=self.settings)
        async with aclosing(events):
            async for event in events:
                if type(event) is AnswerDelta:
                    times.append(time.perf_counter())
                    parts.append(event.text)
                elif type(event) is RunFinished:
                    self.prompt_tokens = event.usage.prompt_tokens
        return sample(start, times, parts)

    async def run(self, path: str, prompt: str) -> Sample:
        if path in self.directs:
            return self.run_direct(prompt, path)
        if path == "backend":
            return await self.run_backend(prompt)
        return await self.run_stream_chat(prompt)


async def handoff_latencies_us(bench: Bench, prompt: str) -> list[float]:
    """Worker post -> consumer receipt of each TextChunk, in microseconds (one extra backend call
    with `_Job.post` wrapped to timestamp each text item; not part of the timed rounds)."""
    from tokenrelay.backends import llamacpp

    posted: list[float] = []
    original = llamacpp._Job.post

    def post(job: Any, item: Any) -> None:
        if type(item) is str:
            posted.append(time.perf_counter())
        original(job, item)

    llamacpp._Job.post = post  # type: ignore[method-assign]
    try:
        received = (await bench.run_backend(prompt)).times
    finally:
        llamacpp._Job.post = original  # type: ignore[method-assign]
    return [(r - p) * 1e6 for r, p in zip(received, posted, strict=True)]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def paired(results: dict[str, list[Sample]], a: str, b: str, f: Callable[[Sample, Sample], float]) -> float:
    """The median over rounds of f(a's sample, b's sample) from the same round."""
    return median([f(x, y) for x, y in zip(results[a], results[b], strict=True)])


async def measure(bench: Bench, args: argparse.Namespace) -> dict[str, float]:
    """One measurement: `args.rounds` interleaved rounds; prints the tables and returns the
    paired medians."""
    results: dict[str, list[Sample]] = {p: [] for p in PATHS}
    for r in range(args.rounds):
        prompt = prompt_for(r, args.prompt_cache)
        shift = r % len(PATHS)
        order = PATHS[shift:] + PATHS[:shift]
        if r % 2:
            order = order[::-1]
        for path in order:
            results[path].append(await bench.run(path, prompt))

    if args.prompt_cache == "cold":
        cache = "cold: KV cache cleared before every call, each call evaluates its whole prompt"
    else:
        cache = "warm: one prompt repeated, each call reuses its cached prompt"
    print(f"prompt cache {cache} (prompt {bench.prompt_tokens} tokens)\n")

    header = f"{'path':<34}{'TTFT ms':>10}{'(min)':>8}{'decode tok/s':>15}{'overall tok/s':>16}{'chunks':>9}"
    print(header)
    print("-" * len(header))
    labels = {
        "direct": "llama-cpp-python direct",
        "direct_b": "llama-cpp-python direct, again",
        "backend": "LlamaCppBackend.stream",
        "stream_chat": "stream_chat (full event path)",
    }
    for path in PATHS:
        rs = results[path]
        print(
            f"{labels[path]:<34}{median([s.ttft_ms for s in rs]):>10.1f}{min(s.ttft_ms for s in rs):>8.1f}"
            f"{median([s.decode_tps for s in rs]):>15.1f}{median([s.overall_tps for s in rs]):>16.1f}"
            f"{median([s.chunks for s in rs]):>9.0f}"
        )
    print(f"(medians over {args.rounds} rounds; TTFT min too, the least noisy figure on a shared machine)\n")

    def tps_ratio(x: Sample, y: Sample) -> float:
        return x.decode_tps / y.decode_tps

    def overall_ratio(x: Sample, y: Sample) -> float:
        return x.overall_tps / y.overall_tps

    def ttft_diff(x: Sample, y: Sample) -> float:
        return x.ttft_ms - y.ttft_ms

    figures: dict[str, float] = {}
    print("paired per round, median:")
    for a, b in (("backend", "direct"), ("direct_b", "direct"), ("stream_chat", "backend")):
        figures[f"{a}/{b} decode tok/s"] = paired(results, a, b, tps_ratio)
        figures[f"{a}/{b} overall tok/s"] = paired(results, a, b, overall_ratio)
        figures[f"TTFT {a} - {b}"] = paired(results, a, b, ttft_diff)
        print(
            f"  {a + ' / ' + b:<22} decode tok/s {figures[f'{a}/{b} decode tok/s']:.3f}  overall tok/s "
            f"{figures[f'{a}/{b} overall tok/s']:.3f}  TTFT {figures[f'TTFT {a} - {b}']:+.1f} ms"
        )
    ratio, diff = figures["backend/direct decode tok/s"], figures["TTFT backend - direct"]
    print(
        f"requirement: tok/s ratio >= 0.95: {'PASS' if ratio >= 0.95 else 'FAIL'}; "
        f"TTFT within 5 ms: {'PASS' if diff <= 5 else 'FAIL'} "
        "(compare with the direct_b / direct control before reading anything into either)"
    )
    same = all(
        len({results[p][r].text for p in PATHS}) == 1
        and results["direct"][r].chunks == results["backend"][r].chunks
        for r in range(args.rounds)
    )
    print(f"same output text and chunk count on every path in every round: {'yes' if same else 'NO'}")
    hops = sorted(await handoff_latencies_us(bench, prompt_for(args.rounds, args.prompt_cache)))
    interval_ms = 1000 / median([s.decode_tps for s in results["backend"]])
    figures["handoff median us"] = median(hops)
    figures["handoff p90 us"] = hops[int(0.9 * (len(hops) - 1))]
    print(
        f"worker -> event loop handoff per token: median {median(hops):.0f} us, "
        f"p90 {hops[int(0.9 * (len(hops) - 1))]:.0f} us, max {hops[-1]:.0f} us "
        f"(token interval {interval_ms:.1f} ms; the handoff overlaps the next token's compute)"
    )
    return figures


async def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--runs", type=int, default=1, help="repeat the whole measurement")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None, help="n_threads and n_threads_batch of both")
    parser.add_argument("--n-ctx", type=int, default=4096)
    parser.add_argument("--prompt-cache", choices=("cold", "warm"), default="cold")
    args = parser.parse_args(argv)

    bench = Bench(args)
    llama = await bench.ours()
    print("tokenrelay embedded llama.cpp backend vs llama-cpp-python direct (same process, interleaved)")
    print(
        f"model {default_model_path().name}  n_ctx={args.n_ctx}  n_threads={llama.n_threads}  "
        f"n_threads_batch={llama.n_threads_batch} (both paths)  max_tokens={args.max_tokens}  "
        f"temperature=0 (greedy)  rounds={args.rounds}  runs={args.runs}"
    )

    for path in PATHS:  # warm-up: first-eval buffer allocations, page faults, memoised token pieces
        await bench.run(path, "Say hello.")

    summary: list[dict[str, float]] = []
    for run in range(args.runs):
        if args.runs > 1:
            print(f"\n=== run {run + 1} of {args.runs}")
        summary.append(await measure(bench, args))
    if args.runs > 1:
        print(f"\n=== {args.runs} runs: median [min, max] of the per-run paired medians")
        for key in summary[0]:
            values = sorted(s[key] for s in summary)
            unit = " ms" if key.startswith("TTFT") else ""
            print(f"  {key:<40}{median(values):>8.3f}{unit}  [{values[0]:.3f}, {values[-1]:.3f}]")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
