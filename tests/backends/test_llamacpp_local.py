"""`LocalModel` on llama.cpp: scoring with cached prompt prefixes, constrained completion, and
that neither disturbs ordinary generation."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import aclosing

import pytest

from tokenrelay.agent.embedded_prompts import expression_grammar
from tokenrelay.backends.base import GenerationSettings, TextChunk
from tokenrelay.backends.llamacpp import LlamaCppBackend
from tokenrelay.backends.local import LocalModel, SplitPrompt
from tokenrelay.errors import BackendError
from tokenrelay.messages import Message
from tokenrelay.tools.calculator import calculate

pytestmark = pytest.mark.model

GREEDY = GenerationSettings(max_tokens=16, temperature=0, seed=0)


@pytest.fixture(scope="module")
async def backend() -> AsyncIterator[LlamaCppBackend]:
    b = LlamaCppBackend()
    await b.load()
    yield b
    await b.aclose()


async def prompt(backend: LlamaCppBackend, question: str) -> SplitPrompt:
    """A few-shot prompt split before the question, as the embedded agent splits it."""
    text = await backend.render(
        [
            Message.system('Reply "math" for arithmetic, "chat" for anything else.'),
            Message.user("What is 3 * 4?"),
            Message.assistant("math"),
            Message.user("Hello there!"),
            Message.assistant("chat"),
            Message.user("\ue000"),
        ]
    )
    prefix, _, suffix = text.partition("\ue000")
    return SplitPrompt(prefix=prefix, rest=question + suffix)


async def answer(backend: LlamaCppBackend, text: str) -> str:
    async with aclosing(backend.stream([Message.user(text)], settings=GREEDY)) as chunks:
        return "".join([c.text async for c in chunks if isinstance(c, TextChunk)])


def test_the_backend_is_a_local_model() -> None:
    assert isinstance(LlamaCppBackend(), LocalModel)


@pytest.mark.anyio
async def test_a_cached_prefix_scores_like_the_whole_prompt(backend: LlamaCppBackend) -> None:
    split = await prompt(backend, "What is 12 times 9?")
    first = await backend.choose(split, ["math", "chat"])  # evaluates and caches the prefix
    again = await backend.choose(split, ["math", "chat"])  # restores it
    whole = await backend.choose(SplitPrompt(prefix="", rest=split.prefix + split.rest), ["math", "chat"])
    assert again.usage.prompt_tokens < first.usage.prompt_tokens
    for a, b, c in zip(first.logprobs, again.logprobs, whole.logprobs, strict=True):
        assert a == pytest.approx(b, abs=1e-3) and a == pytest.approx(c, abs=0.05)
    chat = await backend.choose(await prompt(backend, "Tell me about London."), ["math", "chat"])
    # the question changes the answer (a 2-shot prompt is too little for a 135M model to get
    # both right, which is why the agent's prompt has more examples and a margin)
    assert first.logprobs[0] - first.logprobs[1] > chat.logprobs[0] - chat.logprobs[1] + 1


@pytest.mark.anyio
async def test_options_sharing_first_tokens_are_told_apart(backend: LlamaCppBackend) -> None:
    split = await prompt(backend, "What is 12 times 9?")
    options = ["mathematics", "math", "mat", "chat"]
    choice = await backend.choose(split, options)
    assert len(set(choice.logprobs)) == len(options)  # each scored to its first distinct token
    assert all(lp <= 0 for lp in choice.logprobs)


@pytest.mark.anyio
async def test_scoring_does_not_disturb_generation(backend: LlamaCppBackend) -> None:
    before = await answer(backend, "Name a colour.")
    await backend.choose(await prompt(backend, "What is 2 + 2?"), ["math", "chat"])
    await backend.complete(
        await prompt(backend, "What is 2 + 2?"), grammar=expression_grammar(), max_tokens=8
    )
    assert await answer(backend, "Name a colour.") == before


@pytest.mark.anyio
async def test_completion_follows_the_grammar(backend: LlamaCppBackend) -> None:
    split = await prompt(backend, "Write an arithmetic expression about Paris.")
    done = await backend.complete(split, grammar=expression_grammar(["12", "7"]), max_tokens=24)
    text = done.text.strip()
    assert text and set(text) <= set("0123456789+-*/%^() .,abcdefghijklmnopqrstuvwxyz")
    calculate(text)  # a valid calculator expression, whatever the model wanted to say
    assert done.usage.completion_tokens >= 1


@pytest.mark.anyio
async def test_completion_follows_a_json_schema(backend: LlamaCppBackend) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city", "days"],
    }
    split = await prompt(backend, "Weather in Paris for 3 days?")
    done = await backend.complete(split, json_schema=schema, max_tokens=40)
    value = json.loads(done.text)
    assert isinstance(value["city"], str) and isinstance(value["days"], int)


@pytest.mark.anyio
async def test_a_prompt_too_long_fails_and_the_worker_survives() -> None:
    small = LlamaCppBackend(n_ctx=512)
    with pytest.raises(BackendError, match="context"):
        await small.choose(SplitPrompt(prefix="", rest="word " * 600), ["a", "b"])
    choice = await small.choose(SplitPrompt(prefix="", rest="Say yes or no:"), [" yes", " no"])
    assert len(choice.logprobs) == 2


def test_the_context_window_follows_the_model() -> None:
    assert LlamaCppBackend().context_window == 8192  # SmolLM2's own, not a fixed 4,096
    assert LlamaCppBackend(max_ctx=2048).context_window == 2048
    assert LlamaCppBackend(n_ctx=1024).context_window == 1024
