"""`tokenrelay.testing.ScriptedBackend`: the public test double users build their tests on."""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import aclosing

import pytest

from tokenrelay.backends.base import (
    FinishChunk,
    GenerationSettings,
    ModelChunk,
    TextChunk,
    ThinkingChunk,
    ToolCallChunk,
)
from tokenrelay.errors import BackendError
from tokenrelay.messages import Message, ToolSpec
from tokenrelay.testing import ScriptedBackend, ScriptedCall, split_tokens


async def chunks_of(
    backend: ScriptedBackend,
    messages: Sequence[Message] = (Message.user("q"),),
    **kwargs: object,
) -> list[ModelChunk]:
    async with aclosing(backend.stream(messages, **kwargs)) as stream:  # type: ignore[arg-type]
        return [chunk async for chunk in stream]


def text_of(chunks: Sequence[ModelChunk]) -> str:
    return "".join(c.text for c in chunks if isinstance(c, TextChunk))


# --------------------------------------------------------------------- split_tokens


def test_split_tokens() -> None:
    assert split_tokens("abcdefghij", 4) == ["abcd", "efgh", "ij"]
    assert split_tokens("abc", 1) == ["a", "b", "c"]
    assert split_tokens("", 4) == [""]
    assert "".join(split_tokens("東京タワー🗼", 2)) == "東京タワー🗼"


# --------------------------------------------------------------------- replies


@pytest.mark.anyio
async def test_replies_are_replayed_in_order_and_the_last_repeats() -> None:
    backend = ScriptedBackend(replies=["one", "two", "three"])
    assert [text_of(await chunks_of(backend)) for _ in range(5)] == ["one", "two", "three", "three", "three"]
    assert len(backend.calls) == 5


@pytest.mark.anyio
async def test_default_reply() -> None:
    assert text_of(await chunks_of(ScriptedBackend())) == "Hello!"


@pytest.mark.anyio
async def test_text_replies_are_split_by_token_size_and_end_with_one_finish() -> None:
    chunks = await chunks_of(ScriptedBackend(replies=["abcdefg"], token_size=3))
    assert chunks[:-1] == [TextChunk("abc"), TextChunk("def"), TextChunk("g")]
    finish = chunks[-1]
    assert isinstance(finish, FinishChunk)
    assert finish.reason == "stop"
    assert finish.usage is not None and finish.usage.completion_tokens == 3
    assert sum(isinstance(c, FinishChunk) for c in chunks) == 1


@pytest.mark.anyio
async def test_explicit_chunk_lists_are_sent_as_given() -> None:
    reply: list[str | ModelChunk] = ["Hel", ThinkingChunk("hmm"), "lo", ""]
    chunks = await chunks_of(ScriptedBackend(replies=[reply]))
    assert chunks[:-1] == [TextChunk("Hel"), ThinkingChunk("hmm"), TextChunk("lo"), TextChunk("")]
    assert isinstance(chunks[-1], FinishChunk)


@pytest.mark.anyio
async def test_tool_call_chunks_finish_with_tool_calls() -> None:
    reply = [
        ToolCallChunk(index=0, id="call_1", name="Calculator"),
        ToolCallChunk(index=0, arguments='{"expression": '),
        ToolCallChunk(index=0, arguments='"2+2"}'),
    ]
    backend = ScriptedBackend(replies=[reply, "4"], native_tools=True)
    assert backend.supports_native_tools
    chunks = await chunks_of(backend)
    assert chunks[:-1] == reply
    finish = chunks[-1]
    assert isinstance(finish, FinishChunk) and finish.reason == "tool_calls"
    second = await chunks_of(backend)
    assert text_of(second) == "4"
    assert isinstance(second[-1], FinishChunk) and second[-1].reason == "stop"


def test_native_tools_are_off_by_default() -> None:
    assert not ScriptedBackend().supports_native_tools


@pytest.mark.anyio
async def test_a_finish_chunk_in_a_reply_ends_it() -> None:
    chunks = await chunks_of(ScriptedBackend(replies=[["a", FinishChunk(), "never"]]))
    assert text_of(chunks) == "a"
    assert isinstance(chunks[-1], FinishChunk)


@pytest.mark.anyio
async def test_callable_replies_see_the_messages() -> None:
    backend = ScriptedBackend(replies=lambda messages: f"echo: {messages[-1].content}")
    assert text_of(await chunks_of(backend, [Message.user("ping")])) == "echo: ping"
    assert text_of(await chunks_of(backend, [Message.user("日本")])) == "echo: 日本"


@pytest.mark.anyio
async def test_callable_replies_may_return_chunk_lists() -> None:
    backend = ScriptedBackend(replies=lambda messages: [c.upper() for c in messages[-1].content])
    chunks = await chunks_of(backend, [Message.user("abc")])
    assert chunks[:-1] == [TextChunk("A"), TextChunk("B"), TextChunk("C")]


# --------------------------------------------------------------------- pacing


@pytest.mark.anyio
async def test_tokens_per_second_is_roughly_honoured() -> None:
    backend = ScriptedBackend(replies=["abcdefghijk"], token_size=1, tokens_per_second=50)
    arrivals: list[float] = []
    start = time.monotonic()
    async with aclosing(backend.stream([Message.user("q")])) as stream:
        async for chunk in stream:
            if isinstance(chunk, TextChunk):
                arrivals.append(time.monotonic() - start)
    # 11 chunks at 50/s: the first is due at once, the last 0.2 s after the stream began
    assert len(arrivals) == 11
    assert arrivals[0] < 0.15
    assert 0.18 <= arrivals[-1] < 2.0
    assert arrivals == sorted(arrivals)


@pytest.mark.anyio
async def test_unpaced_replies_are_immediate() -> None:
    start = time.monotonic()
    await chunks_of(ScriptedBackend(replies=["x" * 1000], token_size=1))
    assert time.monotonic() - start < 1.0


# --------------------------------------------------------------------- failures


@pytest.mark.anyio
async def test_fail_after_raises_a_backend_error_after_that_many_chunks() -> None:
    backend = ScriptedBackend(replies=["abcdefghijkl"], token_size=4, fail_after=2, failure_message="gone")
    received: list[ModelChunk] = []
    with pytest.raises(BackendError, match="gone"):
        async with aclosing(backend.stream([Message.user("q")])) as stream:
            async for chunk in stream:
                received.append(chunk)
    assert received == [TextChunk("abcd"), TextChunk("efgh")]
    (call,) = backend.calls
    assert call.chunks_sent == 2
    assert not call.finished


@pytest.mark.anyio
async def test_fail_after_zero_fails_before_any_chunk() -> None:
    backend = ScriptedBackend(replies=["abc"], fail_after=0)
    with pytest.raises(BackendError, match="scripted backend failure"):
        await chunks_of(backend)
    assert backend.calls[0].chunks_sent == 0


@pytest.mark.anyio
async def test_fail_after_past_the_end_fails_instead_of_finishing() -> None:
    backend = ScriptedBackend(replies=["abcd"], token_size=2, fail_after=5)
    received: list[ModelChunk] = []
    with pytest.raises(BackendError):
        async with aclosing(backend.stream([Message.user("q")])) as stream:
            async for chunk in stream:
                received.append(chunk)
    assert received == [TextChunk("ab"), TextChunk("cd")]
    assert not any(isinstance(c, FinishChunk) for c in received)


@pytest.mark.anyio
async def test_fail_after_applies_to_every_reply() -> None:
    backend = ScriptedBackend(replies=["aaaa", "bbbb"], token_size=1, fail_after=1)
    for _ in range(3):
        with pytest.raises(BackendError):
            await chunks_of(backend)
    assert [c.chunks_sent for c in backend.calls] == [1, 1, 1]


# --------------------------------------------------------------------- recorded calls


@pytest.mark.anyio
async def test_calls_record_messages_tools_settings_and_outcome() -> None:
    backend = ScriptedBackend(replies=["abcdef"], token_size=2)
    messages = [Message.system("sys"), Message.user("hi")]
    tools = [ToolSpec(name="Calculator", description="math")]
    settings = GenerationSettings(max_tokens=3, temperature=0.0)
    await chunks_of(backend, messages, tools=tools, settings=settings)
    await chunks_of(backend)
    assert len(backend.calls) == 2
    first = backend.calls[0]
    assert isinstance(first, ScriptedCall)
    assert first.messages == messages
    assert first.tools == tools
    assert first.settings == settings
    assert first.chunks_sent == 3
    assert first.finished and not first.abandoned
    second = backend.calls[1]
    assert second.tools == []
    assert second.settings == GenerationSettings()


@pytest.mark.anyio
async def test_recorded_messages_are_a_copy() -> None:
    backend = ScriptedBackend(replies=["ok"])
    messages = [Message.user("first")]
    await chunks_of(backend, messages)
    messages.append(Message.user("later"))
    assert backend.calls[0].messages == [Message.user("first")]


@pytest.mark.anyio
async def test_closing_early_marks_the_call_abandoned() -> None:
    backend = ScriptedBackend(replies=["abcdefgh"], token_size=1)
    stream = backend.stream([Message.user("q")])
    assert await stream.__anext__() == TextChunk("a")
    assert await stream.__anext__() == TextChunk("b")
    await stream.aclose()
    (call,) = backend.calls
    assert call.abandoned
    assert not call.finished
    assert call.chunks_sent == 2


@pytest.mark.anyio
async def test_usage_counts_prompt_and_completion() -> None:
    backend = ScriptedBackend(replies=["abcdefgh"], token_size=4)
    chunks = await chunks_of(backend, [Message.user("x" * 40)])
    finish = chunks[-1]
    assert isinstance(finish, FinishChunk) and finish.usage is not None
    assert finish.usage.prompt_tokens == 10
    assert finish.usage.completion_tokens == 2
