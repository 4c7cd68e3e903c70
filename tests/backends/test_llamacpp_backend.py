"""The embedded llama.cpp backend against the real default model (SmolLM2-135M, few tokens).

Covers generation through `stream_chat`, prompt cancellation (the worker stops within one
token), UTF-8 integrity when characters are split across byte tokens, JSON-schema and GBNF
constrained decoding, stop sequences, errors, and serialisation of concurrent streams.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from pathlib import Path

import pytest

from tokenrelay.backends.base import FinishChunk, GenerationSettings, ModelChunk, TextChunk
from tokenrelay.backends.llamacpp import LlamaCppBackend
from tokenrelay.errors import BackendError, ConfigError
from tokenrelay.events import AnswerDelta, Event, RunFinished, RunStarted
from tokenrelay.messages import Message
from tokenrelay.run import stream_chat

pytestmark = pytest.mark.model

GREEDY = GenerationSettings(max_tokens=8, temperature=0)
ACTION_SCHEMA = {
    "type": "object",
    "properties": {
        "action": {"enum": ["Calculator", "Final Answer"]},
        "action_input": {"type": "string"},
    },
    "required": ["action", "action_input"],
}


@pytest.fixture(scope="module")
def backend() -> LlamaCppBackend:
    return LlamaCppBackend()


# --------------------------------------------------------------------- helpers


def forced(text: str, *, stop: tuple[str, ...] = (), max_tokens: int = 96) -> GenerationSettings:
    """Settings whose GBNF grammar admits exactly `text` (then end of generation)."""
    literal = text.replace("\\", "\\\\").replace('"', '\\"')
    return GenerationSettings(
        max_tokens=max_tokens, temperature=0, stop=stop, grammar=f'root ::= "{literal}"'
    )


async def collect(
    backend: LlamaCppBackend, prompt: str, settings: GenerationSettings
) -> tuple[list[TextChunk], FinishChunk]:
    chunks: list[TextChunk] = []
    finish: FinishChunk | None = None
    async with aclosing(backend.stream([Message.user(prompt)], settings=settings)) as stream:
        async for chunk in stream:
            assert finish is None, "nothing may follow the FinishChunk"
            if isinstance(chunk, FinishChunk):
                finish = chunk
            else:
                assert isinstance(chunk, TextChunk)
                chunks.append(chunk)
    assert finish is not None, "the stream must end with a FinishChunk"
    return chunks, finish


async def collect_events(backend: LlamaCppBackend, prompt: str, settings: GenerationSettings) -> list[Event]:
    async with aclosing(stream_chat(backend, [Message.user(prompt)], settings=settings)) as events:
        return [event async for event in events]


def check_well_formed(events: Sequence[Event]) -> RunFinished:
    """One RunStarted, non-empty AnswerDeltas, one RunFinished whose answer is the deltas."""
    started, *deltas, finished = events
    assert isinstance(started, RunStarted)
    assert isinstance(finished, RunFinished), finished
    texts = [e.text for e in deltas if isinstance(e, AnswerDelta) and e.text]
    assert len(texts) == len(deltas), deltas
    assert finished.answer == "".join(texts)
    return finished


async def wait_idle(backend: LlamaCppBackend, timeout_s: float = 1.0) -> None:
    """Wait until the worker is idle and its token count has settled (fails after timeout_s)."""
    deadline = time.monotonic() + timeout_s
    while backend.busy:
        assert time.monotonic() < deadline, f"the worker still generates {timeout_s}s after cancellation"
        await asyncio.sleep(0.005)
    settled = backend.tokens_generated
    await asyncio.sleep(0.1)
    assert backend.tokens_generated == settled, "tokens are still being generated"


# --------------------------------------------------------------------- generation


@pytest.mark.anyio
async def test_stream_chat_generates_a_well_formed_run(backend: LlamaCppBackend) -> None:
    events = await collect_events(backend, "Name three colours.", GREEDY)
    finished = check_well_formed(events)
    assert len(events) >= 3, "at least one AnswerDelta"
    assert finished.answer.strip()
    assert 1 <= finished.usage.completion_tokens <= 8
    assert finished.usage.prompt_tokens > 0
    assert finished.finish_reason in {"length", "stop"}
    assert finished.timings.first_token_s is not None


@pytest.mark.anyio
async def test_usage_counts_the_tokens_generated(backend: LlamaCppBackend) -> None:
    before = backend.tokens_generated
    chunks, finish = await collect(backend, "Count from one to ten.", GREEDY)
    assert chunks
    assert finish.usage is not None
    assert finish.usage.completion_tokens == backend.tokens_generated - before


# --------------------------------------------------------------------- cancellation

LONG = GenerationSettings(max_tokens=200, temperature=0)
LONG_PROMPT = "Write a long essay about the history of the Roman Empire."


@pytest.mark.anyio
@pytest.mark.parametrize("path", ["backend.stream", "stream_chat"])
async def test_consumer_leaving_stops_generation_within_one_token(
    backend: LlamaCppBackend, path: str
) -> None:
    before = backend.tokens_generated
    consumed = 0
    stream: AsyncIterator[ModelChunk | Event]
    if path == "backend.stream":
        stream = backend.stream([Message.user(LONG_PROMPT)], settings=LONG)
    else:
        stream = stream_chat(backend, [Message.user(LONG_PROMPT)], settings=LONG)
    async with aclosing(stream):
        async for item in stream:
            if isinstance(item, TextChunk | AnswerDelta):
                consumed += 1
                if consumed == 2:
                    break
    assert consumed == 2
    await wait_idle(backend)
    generated = backend.tokens_generated - before
    assert consumed <= generated <= consumed + 2, (consumed, generated)


@pytest.mark.anyio
@pytest.mark.parametrize("path", ["backend.stream", "stream_chat"])
async def test_task_cancellation_stops_generation_within_one_token(
    backend: LlamaCppBackend, path: str
) -> None:
    before = backend.tokens_generated
    consumed = 0
    two_chunks = asyncio.Event()

    async def consume() -> None:
        nonlocal consumed
        stream: AsyncIterator[ModelChunk | Event]
        if path == "backend.stream":
            stream = backend.stream([Message.user(LONG_PROMPT)], settings=LONG)
        else:
            stream = stream_chat(backend, [Message.user(LONG_PROMPT)], settings=LONG)
        async for item in stream:  # no aclosing: cancellation alone must stop the worker
            if isinstance(item, TextChunk | AnswerDelta):
                consumed += 1
                if consumed == 2:
                    two_chunks.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(two_chunks.wait(), timeout=30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_idle(backend)
    generated = backend.tokens_generated - before
    assert 2 <= consumed <= generated <= consumed + 2, (consumed, generated)


@pytest.mark.anyio
async def test_a_job_cancelled_while_queued_never_runs(backend: LlamaCppBackend) -> None:
    before = backend.tokens_generated
    first_chunk = asyncio.Event()
    consumed = 0

    async def running() -> None:
        nonlocal consumed
        async with aclosing(backend.stream([Message.user(LONG_PROMPT)], settings=LONG)) as stream:
            async for chunk in stream:
                if isinstance(chunk, TextChunk):
                    consumed += 1
                    first_chunk.set()

    async def queued() -> None:
        async with aclosing(backend.stream([Message.user("Say hello.")], settings=LONG)) as stream:
            async for _ in stream:
                pytest.fail("a job cancelled while queued must produce nothing")

    first = asyncio.create_task(running())
    await asyncio.wait_for(first_chunk.wait(), timeout=30)
    second = asyncio.create_task(queued())
    await asyncio.sleep(0.05)  # `second` submits its job behind the running one
    second.cancel()
    first.cancel()
    for task in (second, first):
        with pytest.raises(asyncio.CancelledError):
            await task
    await wait_idle(backend)
    assert backend.tokens_generated - before <= consumed + 2


# --------------------------------------------------------------------- unicode

FORCED_STRINGS = [
    pytest.param("日本語のテキスト😀🎉 naïve", id="japanese-emoji-diaeresis"),
    pytest.param("家族 👨‍👩‍👧 と 👩🏽‍💻 🏳️‍🌈", id="zwj-sequences"),
    pytest.param("Cafe\u0301 Zoe\u0308 n\u0303 a\u030a\u0301", id="combining-marks"),
    pytest.param("Привет, мир! مرحبا 한국어 ∑∫", id="cyrillic-arabic-hangul-math"),
]


@pytest.mark.anyio
async def test_the_tokenizer_splits_characters_into_byte_tokens(backend: LlamaCppBackend) -> None:
    """Precondition of the Unicode tests: some tokens are partial UTF-8 sequences."""
    model = await backend.load()
    tokens = model.llama.tokenize("日本語😀".encode(), add_bos=False, special=False)
    pieces = [model.piece(t) for t in tokens]
    assert b"".join(pieces) == "日本語😀".encode()
    partial = []
    for p in pieces:
        try:
            p.decode("utf-8")
        except UnicodeDecodeError:
            partial.append(p)
    assert partial, pieces


@pytest.mark.anyio
@pytest.mark.parametrize("text", FORCED_STRINGS)
async def test_characters_split_across_tokens_arrive_whole(backend: LlamaCppBackend, text: str) -> None:
    chunks, finish = await collect(backend, "Say something.", forced(text))
    assert all("\ufffd" not in c.text for c in chunks), [c.text for c in chunks]
    assert "".join(c.text for c in chunks) == text
    assert finish.reason == "stop"
    assert finish.usage is not None
    assert finish.usage.completion_tokens > len(chunks) // 2


# --------------------------------------------------------------------- constrained decoding


@pytest.mark.anyio
@pytest.mark.parametrize("prompt", ["What is 17 times 23?", "Who wrote Hamlet?", "Bonjour, comment ça va ?"])
async def test_json_schema_constrains_the_output(backend: LlamaCppBackend, prompt: str) -> None:
    assert backend.enforces_json_schema
    settings = GenerationSettings(max_tokens=96, temperature=0, json_schema=ACTION_SCHEMA)
    events = await collect_events(backend, prompt, settings)
    finished = check_well_formed(events)
    value = json.loads(finished.answer)
    assert set(value) >= {"action", "action_input"}
    assert value["action"] in {"Calculator", "Final Answer"}
    assert isinstance(value["action_input"], str)


# --------------------------------------------------------------------- stop sequences


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("output", "expected"),
    [
        pytest.param("abc STOP def", "abc ", id="stop-hit"),
        pytest.param("abc STOOP ST def", "abc STOOP ST def", id="held-back-prefix-released"),
        pytest.param("abc ST", "abc ST", id="held-back-prefix-flushed-at-end"),
    ],
)
async def test_stop_sequences(backend: LlamaCppBackend, output: str, expected: str) -> None:
    chunks, finish = await collect(backend, "Say something.", forced(output, stop=("STOP",)))
    assert "".join(c.text for c in chunks) == expected
    assert all(c.text for c in chunks)
    assert finish.reason == "stop"


# --------------------------------------------------------------------- errors


def test_missing_model_file_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model.gguf"
    with pytest.raises(ConfigError) as info:
        LlamaCppBackend(missing)
    assert str(missing) in str(info.value)


@pytest.mark.anyio
async def test_a_file_that_is_not_gguf_is_a_config_error(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"this is not a GGUF file" * 100)
    backend = LlamaCppBackend(bogus)
    with pytest.raises(ConfigError) as info:
        async for _ in backend.stream([Message.user("Hi")], settings=GREEDY):
            pass
    assert str(bogus) in str(info.value)


@pytest.fixture(scope="module")
def small_backend() -> LlamaCppBackend:
    return LlamaCppBackend(n_ctx=64)


@pytest.mark.anyio
async def test_a_prompt_too_long_for_the_context_fails_and_the_worker_survives(
    small_backend: LlamaCppBackend,
) -> None:
    stream = small_backend.stream([Message.user("word " * 100)], settings=GREEDY)  # does not raise
    with pytest.raises(BackendError, match="context"):
        async for _ in stream:
            pass
    chunks, finish = await collect(small_backend, "Hi", GenerationSettings(max_tokens=4, temperature=0))
    assert chunks
    assert finish.reason in {"length", "stop"}


@pytest.mark.anyio
async def test_a_prompt_too_long_for_the_context_without_max_tokens(small_backend: LlamaCppBackend) -> None:
    settings = GenerationSettings(max_tokens=None, temperature=0)
    with pytest.raises(BackendError, match="context"):
        async for _ in small_backend.stream([Message.user("word " * 100)], settings=settings):
            pass


# --------------------------------------------------------------------- concurrency


@pytest.mark.anyio
async def test_concurrent_streams_are_serialised_not_interleaved(backend: LlamaCppBackend) -> None:
    outputs = {"a": "alpha beta gamma delta", "b": "one two three four"}
    arrivals: list[str] = []

    async def run(name: str) -> list[Event]:
        events: list[Event] = []
        settings = forced(outputs[name])
        async with aclosing(stream_chat(backend, [Message.user("Say something.")], settings=settings)) as s:
            async for event in s:
                if isinstance(event, AnswerDelta):
                    arrivals.append(name)
                events.append(event)
        return events

    results = await asyncio.gather(run("a"), run("b"))
    for name, events in zip(outputs, results, strict=True):
        finished = check_well_formed(events)
        assert finished.answer == outputs[name]
        assert finished.finish_reason == "stop"
    # one job runs to its end before the next starts: the arrivals switch streams once
    switches = sum(1 for x, y in zip(arrivals, arrivals[1:], strict=False) if x != y)
    assert switches == 1, arrivals


@pytest.mark.anyio
async def test_concurrent_free_generations_both_finish(backend: LlamaCppBackend) -> None:
    results = await asyncio.gather(
        collect_events(backend, "Name a fruit.", GREEDY), collect_events(backend, "Name an animal.", GREEDY)
    )
    for events in results:
        finished = check_well_formed(events)
        assert 1 <= finished.usage.completion_tokens <= 8
