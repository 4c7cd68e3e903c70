"""The embedded agent on the default model (SmolLM2-135M): is it right, and is it fast?

    python bench/bench_embedded.py eval [--no-precheck] [--dev]
    python bench/bench_embedded.py ttft [--rounds 5]

`eval` runs every question of bench/embedded_eval_set.py through the real agent (greedy,
the default tools) and reports per category: correct tool choice, correct maths answers (the
expected number appears in the answer, to 4 significant digits), no tool call for chit-chat,
and what decided (the deterministic pre-check or the model's likelihoods). `--no-precheck`
makes the model decide (and write every expression) alone. `--dev` prints the decision margins
on the development set that the agent's margin was chosen on.

`ttft` measures time to first answer token of the agent against a plain chat call on the same
prompt, in the same process, interleaved question by question (the order alternates each
round), both with the KV cache cleared before each call, so each evaluates its whole prompt
as a new conversation would; the agent's few-shot prefixes stay cached as they do in
service. It prints medians per category and the median of the paired agent/plain ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from contextlib import aclosing
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from embedded_eval_set import DEV_CHAT, DEV_MATHS, DOCUMENT, ITEMS, JAPANESE, Item

from tokenrelay.agent.loop import Agent
from tokenrelay.agent.prompts import DEFAULT_SYSTEM
from tokenrelay.backends.base import GenerationSettings
from tokenrelay.backends.llamacpp import LlamaCppBackend
from tokenrelay.events import AnswerDelta, ReasoningDelta, RunFinished, ToolCallStarted
from tokenrelay.memory import InMemorySessionStore
from tokenrelay.messages import Message
from tokenrelay.run import stream_chat

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:e[-+]?\d+)?")


def mentions_value(answer: str, value: float) -> bool:
    """Whether a number in `answer` equals `value` to 4 significant digits."""
    for raw in _NUMBER.findall(answer):
        try:
            x = float(raw.replace(",", ""))
        except ValueError:
            continue
        if x == value or (value != 0 and abs(x - value) / abs(value) < 5e-4):
            return True
    return False


async def ask(agent: Agent, store: InMemorySessionStore, item: Item) -> tuple[str | None, str, str, float]:
    """(tool called, reason, answer, seconds) for one question."""
    session = None
    if item.document:
        session = (await store.create_session()).id
        await store.set_document(session, name="design.md", text=DOCUMENT)
    tool: str | None = None
    reason = ""
    parts: list[str] = []
    started = time.perf_counter()
    async with aclosing(agent.run(item.question, session_id=session, mode="full")) as events:
        async for event in events:
            if isinstance(event, ToolCallStarted):
                tool = tool or event.name
            elif isinstance(event, ReasoningDelta) and event.text.startswith("Action:"):
                reason = event.text.split("[", 1)[1].split("]", 1)[0].split(" (", 1)[0]
            elif isinstance(event, AnswerDelta):
                parts.append(event.text)
    return tool, reason or "no candidate", "".join(parts), time.perf_counter() - started


async def run_eval(args: argparse.Namespace) -> None:
    backend = LlamaCppBackend()
    await backend.load()
    store = InMemorySessionStore()
    agent = Agent(
        backend, store=store, memory_k=0, generation=GenerationSettings(max_tokens=48, temperature=0)
    )
    if args.no_precheck:
        assert agent._embedded is not None  # bench only: the ablation of the pre-check
        agent._embedded.precheck = False
    rows: dict[str, list[tuple[bool, bool | None, str]]] = defaultdict(list)
    misses: list[str] = []
    for item in ITEMS:
        tool, reason, answer, _ = await ask(agent, store, item)
        chose_right = tool == item.tool
        correct = mentions_value(answer, item.value) if item.value is not None else None
        if item.fact is not None:
            correct = item.fact.lower() in answer.lower()
        rows[item.category].append((chose_right, correct, reason))
        if not chose_right or correct is False:
            misses.append(f"  [{item.category}] {item.question!r}: tool={tool} ({reason}) -> {answer[:90]!r}")
    mode = "model decides alone (--no-precheck)" if args.no_precheck else "pre-check + model (as shipped)"
    print(f"embedded agent on {backend.model_path.name}: {mode}; greedy, max_tokens 48\n")
    print(f"{'category':<26}{'n':>4}{'tool choice':>14}{'answer right':>15}   decided by")
    print("-" * 86)
    totals: dict[str, list[bool]] = defaultdict(list)
    for category, results in rows.items():
        choice = sum(r[0] for r in results)
        scored = [r[1] for r in results if r[1] is not None]
        reasons = defaultdict(int)
        for r in results:
            reasons[r[2]] += 1
        by = ", ".join(f"{k} {v}" for k, v in sorted(reasons.items()))
        answer = f"{sum(scored)}/{len(scored)}" if scored else "-"
        print(f"{category:<26}{len(results):>4}{f'{choice}/{len(results)}':>14}{answer:>15}   {by}")
        totals["choice"] += [r[0] for r in results]
        if category.startswith(("arithmetic", "maths")):
            totals["maths answer"] += [bool(r[1]) for r in results]
        if category.startswith("chit-chat"):
            totals["chit-chat no tool"] += [r[0] for r in results]
    print("-" * 86)
    for name, values in totals.items():
        print(f"{name:<26}{sum(values)}/{len(values)} = {100 * sum(values) / len(values):.1f}%")
    if misses:
        print("\nmisses:")
        print("\n".join(misses))
    print("\nJapanese on the tiny model (expected: the English-only notice, no model call):")
    for item in JAPANESE:
        before = backend.tokens_generated
        tool, _, answer, seconds = await ask(agent, store, item)
        generated = backend.tokens_generated - before
        notice = answer.startswith("This small demo model")
        print(
            f"  {item.question!r}: notice={'yes' if notice else 'NO'} tool={tool} "
            f"tokens generated={generated} in {seconds * 1000:.0f} ms"
        )
    if args.dev:
        await print_dev_margins(agent)


async def print_dev_margins(agent: Agent) -> None:
    """The development set's decision margins (log p(math) - log p(chat)) and the best cut."""
    policy = agent._embedded
    assert policy is not None
    policy.precheck = False
    margins: dict[str, list[float]] = {"maths": [], "chat": []}

    class Hooks:
        def add_usage(self, usage: object) -> None:
            pass

    for kind, questions in (("maths", DEV_MATHS), ("chat", DEV_CHAT)):
        for q in questions:
            decision = await policy.decide(q, Hooks())  # type: ignore[arg-type]
            if decision.margin is not None:
                margins[kind].append(decision.margin)
    low = min(margins["maths"])
    high = max(margins["chat"]) if margins["chat"] else float("-inf")
    print(
        f"\ndevelopment set margins: maths min {low:+.2f}, chat max {high:+.2f} "
        "(the model alone on every development question)"
    )
    print(f"  maths {sorted(round(m, 2) for m in margins['maths'])}")
    print(f"  chat  {sorted(round(m, 2) for m in margins['chat'])}")
    print(f"  agent margin {policy.margin:+.2f}")
    policy.precheck = True


TTFT_PROMPTS: dict[str, list[str]] = {
    "chit-chat": ["Tell me about Paris.", "What is photosynthesis?", "How do I make a cup of tea?"],
    "chit-chat, one number": ["I have 2 cats. What names would you suggest?", "What happened in 1969?"],
    "chit-chat, two numbers": [
        "I have 2 cats and 3 dogs. What names would you suggest?",
        "What happened in Europe between 1939 and 1945?",
    ],
    "arithmetic": ["What is 1234 * 5678?", "What is twelve times seven?", "What is the square root of 71?"],
    "word problem": [
        "If I have 3 apples and buy 5 more, how many apples do I have?",
        "Sam had 50 dollars and spent 18. How much money is left?",
    ],
}


async def first_token_s(events: object) -> float:
    started = time.perf_counter()
    first: float | None = None
    async with aclosing(events) as stream:  # type: ignore[type-var]
        async for event in stream:
            if first is None and type(event) is AnswerDelta:
                first = time.perf_counter() - started
            if isinstance(event, RunFinished):
                break
    assert first is not None
    return first


async def run_ttft(args: argparse.Namespace) -> None:
    backend = LlamaCppBackend()
    model = await backend.load()
    settings = GenerationSettings(max_tokens=8, temperature=0)
    agent = Agent(backend, generation=settings)

    async def plain(q: str) -> float:
        model.llama.reset()
        messages = [Message.system(DEFAULT_SYSTEM), Message.user(q)]
        return await first_token_s(stream_chat(backend, messages, settings=settings))

    async def agentic(q: str) -> float:
        model.llama.reset()
        return await first_token_s(agent.run(q))

    for qs in TTFT_PROMPTS.values():  # warm-up: allocations, and the agent's cached prefixes
        for q in qs:
            await plain(q)
            await agentic(q)
    samples: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r in range(args.rounds):
        for category, qs in TTFT_PROMPTS.items():
            for q in qs:
                if r % 2:
                    a = await agentic(q)
                    p = await plain(q)
                else:
                    p = await plain(q)
                    a = await agentic(q)
                samples[category].append((a, p))
    print(f"time to first answer token, agent vs plain call, same prompt, {backend.model_path.name}")
    print(
        f"threads {model.threads.decode}/{model.threads.batch}; rounds {args.rounds}; "
        "KV cache cleared before each call\n"
    )
    print(f"{'category':<24}{'n':>4}{'agent ms':>10}{'plain ms':>10}{'agent/plain':>13}")
    print("-" * 61)
    ratios: list[float] = []
    for category, pairs in samples.items():
        rs = [a / p for a, p in pairs]
        ratios += rs
        print(
            f"{category:<24}{len(pairs):>4}{statistics.median(a for a, _ in pairs) * 1000:>10.0f}"
            f"{statistics.median(p for _, p in pairs) * 1000:>10.0f}{statistics.median(rs):>13.2f}"
        )
    print("-" * 61)
    print(f"{'all (median of paired ratios)':<38}{statistics.median(ratios):>23.2f}")
    print("requirement: agent/plain <= 1.3:", "PASS" if statistics.median(ratios) <= 1.3 else "FAIL")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ev = sub.add_parser("eval", help="tool choice and answer correctness")
    ev.add_argument(
        "--no-precheck", action="store_true", help="the model decides and writes expressions alone"
    )
    ev.add_argument("--dev", action="store_true", help="also print the development set's decision margins")
    tt = sub.add_parser("ttft", help="time to first answer token, agent vs plain")
    tt.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    asyncio.run(run_eval(args) if args.command == "eval" else run_ttft(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
