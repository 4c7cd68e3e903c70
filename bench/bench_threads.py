"""llama.cpp threads on this machine: decode and prompt speed, and whether the server stays
responsive while a generation runs.

    python bench/bench_threads.py [--rounds 5] [--configs default,auto,1/1,2/1]

Part 1 (speed): one `Llama` per thread configuration (decode threads / prompt threads), same
model, prompt and greedy sampling, interleaved round by round. `default` is llama-cpp-python's
own choice (`cpu_count // 2` decode threads, `cpu_count` for prompts), `auto` is tokenrelay's
(`backends/machine.py`: one decode thread per available physical core, every available CPU for
prompts). Per round: prompt evaluation of a ~300-token prompt (tok/s) and decode of 128 tokens
(tok/s). Medians.

Part 2 (responsiveness): a real server (`tokenrelay serve`, one process) per configuration;
`GET /health` every 20 ms, first idle, then while `/chat` streams a 200-token answer from the
default model. Reports /health latency p50 / p99 / max in both phases and the stream's tok/s.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from tokenrelay.backends.llamacpp import default_model_path
from tokenrelay.backends.machine import available_cpus, choose_threads, cpu_quota, physical_cores


def parse_config(name: str) -> tuple[int, int]:
    if name == "default":
        n = os.cpu_count() or 1
        return max(1, n // 2), n
    if name == "auto":
        t = choose_threads(None)
        return t.decode, t.batch
    decode, _, batch = name.partition("/")
    return int(decode), int(batch or decode)


def speed(configs: Sequence[str], rounds: int) -> None:
    from llama_cpp import Llama

    models: dict[str, Any] = {}
    for name in configs:
        decode, batch = parse_config(name)
        models[name] = Llama(
            model_path=str(default_model_path()),
            n_ctx=2048,
            n_threads=decode,
            n_threads_batch=batch,
            verbose=False,
        )
    any_model = next(iter(models.values()))
    long_prompt = any_model.tokenize(
        ("The quick brown fox jumps over the lazy dog while the river flows to the sea. " * 20).encode()
    )[:300]
    story = any_model.tokenize(
        b"<|im_start|>user\nWrite a story about a lighthouse.<|im_end|>\n<|im_start|>assistant\n"
    )
    prompt_tps: dict[str, list[float]] = {n: [] for n in configs}
    decode_tps: dict[str, list[float]] = {n: [] for n in configs}
    for llama in models.values():  # warm-up
        llama.reset()
        llama.eval(long_prompt[:32])
    for r in range(rounds):
        order = list(configs[r % len(configs) :]) + list(configs[: r % len(configs)])
        for name in order:
            llama = models[name]
            llama.reset()
            t = time.perf_counter()
            llama.eval(long_prompt)
            prompt_tps[name].append(len(long_prompt) / (time.perf_counter() - t))
            llama.reset()
            n, first, last = 0, 0.0, 0.0
            for _ in llama.generate(story, temp=0.0):
                n += 1
                now = time.perf_counter()
                if n == 1:
                    first = now
                last = now
                if n >= 128:
                    break
            decode_tps[name].append((n - 1) / (last - first))
    ref = configs[0]
    print(
        f"{'threads (decode/prompt)':<26}{'prompt tok/s':>14}{'decode tok/s':>14}{'(best)':>8}"
        f"{f'prompt / {ref}':>18}{f'decode / {ref}':>18}"
    )
    print("-" * 98)
    for name in configs:
        decode, batch = parse_config(name)
        p_ratio = statistics.median(a / b for a, b in zip(prompt_tps[name], prompt_tps[ref], strict=True))
        d_ratio = statistics.median(a / b for a, b in zip(decode_tps[name], decode_tps[ref], strict=True))
        print(
            f"{f'{name} ({decode}/{batch})':<26}{statistics.median(prompt_tps[name]):>14.0f}"
            f"{statistics.median(decode_tps[name]):>14.1f}{max(decode_tps[name]):>8.1f}"
            f"{p_ratio:>18.2f}{d_ratio:>18.2f}"
        )
    print(
        f"(medians over {rounds} interleaved rounds, ratios paired per round; prompt: {len(long_prompt)} "
        "tokens; decode: 128 tokens)\n"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def poll_health(url: str, stop: threading.Event, out: list[float]) -> None:
    with httpx.Client(timeout=10) as client:
        while not stop.is_set():
            t = time.perf_counter()
            client.get(url + "/health").raise_for_status()
            out.append((time.perf_counter() - t) * 1000)
            time.sleep(0.02)


def responsiveness(configs: Sequence[str], tmp: Path) -> None:
    print(
        f"{'threads':<16}{'idle /health ms p50/p99/max':>30}"
        f"{'during generation p50/p99/max':>32}{'stream tok/s':>14}"
    )
    print("-" * 92)
    for name in configs:
        decode, batch = parse_config(name)
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENRELAY_")}
        db = tmp / (name.replace("/", "-") + ".db")
        env.update(TOKENRELAY_DB=f"sqlite:///{db}", TOKENRELAY_PROGRESS="0")
        if name != "auto":
            env.update(TOKENRELAY_LLAMA_N_THREADS=str(decode), TOKENRELAY_LLAMA_N_THREADS_BATCH=str(batch))
        server = subprocess.Popen(
            [sys.executable, "-m", "tokenrelay.cli", "serve", "--port", str(port), "--max-tokens", "200"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(url + "/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("server did not start")
                time.sleep(0.2)
            idle: list[float] = []
            stop = threading.Event()
            poller = threading.Thread(target=poll_health, args=(url, stop, idle))
            poller.start()
            time.sleep(3)
            stop.set()
            poller.join()
            busy: list[float] = []
            stop = threading.Event()
            poller = threading.Thread(target=poll_health, args=(url, stop, busy))
            tokens, first, last = 0, 0.0, 0.0
            poller.start()
            with httpx.stream(
                "POST",
                url + "/chat",
                json={"text": "Write a long story about a lighthouse keeper."},
                timeout=120,
            ) as response:
                for chunk in response.iter_text():
                    if chunk:
                        tokens += 1
                        now = time.perf_counter()
                        first = first or now
                        last = now
            stop.set()
            poller.join()
            rate = (tokens - 1) / (last - first) if tokens > 1 else float("nan")
            print(
                f"{f'{name} ({decode}/{batch})':<16}"
                f"{f'{statistics.median(idle):.1f} / {percentile(idle, 0.99):.1f} / {max(idle):.1f}':>30}"
                f"{f'{statistics.median(busy):.1f} / {percentile(busy, 0.99):.1f} / {max(busy):.1f}':>32}"
                f"{rate:>14.1f}"
            )
        finally:
            server.terminate()
            server.wait(30)
    print("(/health every 20 ms; the stream is the agent's plain answer, about one HTTP chunk per token)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--configs", default="default,auto,1/1,2/1")
    parser.add_argument("--skip-server", action="store_true")
    args = parser.parse_args(argv)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    quota = cpu_quota()
    print(
        f"machine: {os.cpu_count()} CPUs, {len(os.sched_getaffinity(0))} in this process's affinity, "
        f"cgroup quota {quota if quota is not None else 'none'}, {physical_cores()} physical cores; "
        f"available CPUs {available_cpus()}; tokenrelay's choice {choose_threads(None)}\n"
    )
    speed(configs, args.rounds)
    if not args.skip_server:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            responsiveness([c for c in configs if c != "2/1"], Path(tmp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
