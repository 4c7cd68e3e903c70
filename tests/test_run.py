"""`stream_chat` over the scripted backend: the event-stream contract of a plain model run."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenrelay.backends.base import FinishChunk, GenerationSettings, ThinkingChunk
from tokenrelay.events import (
    AnswerDelta,
    Event,
    ReasoningDelta,
    RunError,
    RunFinished,
    RunStarted,
)
from tokenrelay.messages import Message
from tokenrelay.run import new_run_id, stream_chat
from tokenrelay.testing import ScriptedBackend

PROMPT = [Message.user("hello")]


async def collect(events: AsyncIterator[Event]) -> list[Event]:
    async with aclosing(events) as stream:
        return [event async for event in stream]


def answer_of(events: Sequence[Event]) -> str:
    return "".join(e.text for e in events if isinstance(e, AnswerDelta))


def assert_well_formed(events: Sequence[Event]) -> RunFinished | RunError:
    """Exactly one RunStarted, first; exactly one terminal event, last; deltas add up."""
    assert events, "no events"
    assert isinstance(events[0], RunStarted)
    assert sum(isinstance(e, RunStarted) for e in events) == 1
    terminal = events[-1]
    assert isinstance(terminal, RunFinished | RunError)
    assert sum(isinstance(e, RunFinished | RunError) for e in events) == 1
    assert answer_of(events) == terminal.answer
    return terminal


def split_at(text: str, cuts: list[int]) -> list[str]:
    bounds = [0, *sorted(cuts), len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


@st.composite
def text_and_chunks(draw: st.DrawFn) -> tuple[str, list[str]]:
    text = draw(st.text(max_size=200))
    cuts = draw(st.lists(st.integers(0, len(text)), max_size=30))
    return text, split_at(text, cuts)


# --------------------------------------------------------------------- the contract


@pytest.mark.anyio
async def test_one_started_first_one_finished_last_and_deltas_make_the_answer() -> None:
    backend = ScriptedBackend(replies=["The answer is forty-two."], token_size=3)
    events = await collect(stream_chat(backend, PROMPT))
    terminal = assert_well_formed(events)
    assert isinstance(terminal, RunFinished)
    assert terminal.answer == "The answer is forty-two."
    deltas = [e.text for e in events if isinstance(e, AnswerDelta)]
    assert deltas == ["The", " an", "swe", "r i", "s f", "ort", "y-t", "wo."]


@pytest.mark.anyio
async def test_run_started_carries_ids_and_model_name() -> None:
    backend = ScriptedBackend(replies=["hi"])
    events = await collect(stream_chat(backend, PROMPT, run_id="run_fixed", session_id="sess-1"))
    started = events[0]
    assert started == RunStarted(run_id="run_fixed", session_id="sess-1", model="scripted")


@pytest.mark.anyio
async def test_run_ids_are_fresh_when_not_given() -> None:
    backend = ScriptedBackend(replies=["hi"])
    first = (await collect(stream_chat(backend, PROMPT)))[0]
    second = (await collect(stream_chat(backend, PROMPT)))[0]
    assert isinstance(first, RunStarted) and isinstance(second, RunStarted)
    assert first.run_id.startswith("run_") and second.run_id.startswith("run_")
    assert first.run_id != second.run_id
    assert new_run_id() != new_run_id()


@pytest.mark.anyio
async def test_messages_and_settings_reach_the_backend() -> None:
    backend = ScriptedBackend(replies=["ok"])
    gen = GenerationSettings(max_tokens=7, temperature=0.0, stop=("\n",))
    messages = [Message.system("be brief"), Message.user("hi")]
    await collect(stream_chat(backend, messages, settings=gen))
    (call,) = backend.calls
    assert call.messages == messages
    assert call.settings == gen
    assert call.finished and not call.abandoned


@pytest.mark.anyio
async def test_usage_finish_reason_and_timings_are_reported() -> None:
    backend = ScriptedBackend(replies=["abcdefgh"], token_size=2)
    terminal = (await collect(stream_chat(backend, PROMPT)))[-1]
    assert isinstance(terminal, RunFinished)
    assert terminal.finish_reason == "stop"
    assert terminal.usage.completion_tokens == 4
    assert terminal.timings.first_token_s is not None
    assert 0 <= terminal.timings.first_token_s <= terminal.timings.total_s


@pytest.mark.anyio
async def test_reasoning_is_separate_from_the_answer() -> None:
    backend = ScriptedBackend(replies=[[ThinkingChunk("let me think"), "Yes", ".", ThinkingChunk("done")]])
    events = await collect(stream_chat(backend, PROMPT))
    terminal = assert_well_formed(events)
    assert terminal.answer == "Yes."
    assert [e.text for e in events if isinstance(e, ReasoningDelta)] == ["let me think", "done"]


@pytest.mark.anyio
async def test_empty_chunks_produce_no_deltas() -> None:
    backend = ScriptedBackend(replies=[["", "a", "", "b", ""]])
    events = await collect(stream_chat(backend, PROMPT))
    assert [e.text for e in events if isinstance(e, AnswerDelta)] == ["a", "b"]
    assert assert_well_formed(events).answer == "ab"


@pytest.mark.anyio
async def test_empty_reply_is_a_finished_run_with_an_empty_answer() -> None:
    events = await collect(stream_chat(ScriptedBackend(replies=[""]), PROMPT))
    terminal = assert_well_formed(events)
    assert isinstance(terminal, RunFinished)
    assert terminal.answer == ""
    assert terminal.timings.first_token_s is None


@pytest.mark.anyio
async def test_scripted_finish_chunk_ends_the_reply() -> None:
    backend = ScriptedBackend(replies=[["kept", FinishChunk("stop"), "dropped"]])
    events = await collect(stream_chat(backend, PROMPT))
    assert assert_well_formed(events).answer == "kept"


@pytest.mark.anyio
async def test_japanese_text_is_delivered_whole() -> None:
    text = "こんにちは、世界！🌏 元気ですか？"
    events = await collect(stream_chat(ScriptedBackend(replies=[text], token_size=1), PROMPT))
    assert assert_well_formed(events).answer == text


# --------------------------------------------------------------------- properties


@settings(max_examples=150, deadline=None)
@given(text_and_chunks())
def test_any_split_of_any_text_streams_back_exactly(case: tuple[str, list[str]]) -> None:
    text, chunks = case
    assert "".join(chunks) == text
    events = asyncio.run(collect(stream_chat(ScriptedBackend(replies=[chunks]), PROMPT)))
    terminal = assert_well_formed(events)
    assert isinstance(terminal, RunFinished)
    assert terminal.answer == text
    assert all(e.text for e in events if isinstance(e, AnswerDelta))


@settings(max_examples=100, deadline=None)
@given(text_and_chunks(), st.integers(0, 40))
def test_any_mid_stream_failure_keeps_the_partial_answer(
    case: tuple[str, list[str]], fail_after: int
) -> None:
    text, chunks = case
    backend = ScriptedBackend(replies=[chunks], fail_after=fail_after, failure_message="link dropped")
    events = asyncio.run(collect(stream_chat(backend, PROMPT)))
    terminal = assert_well_formed(events)
    assert isinstance(terminal, RunError)
    assert terminal.code == "backend"
    assert terminal.answer == "".join(chunks[:fail_after])
    assert text.startswith(terminal.answer)


@pytest.mark.anyio
async def test_nothing_follows_the_terminal_event() -> None:
    stream = stream_chat(ScriptedBackend(replies=["abc"]), PROMPT)
    async with aclosing(stream):
        async for event in stream:
            if isinstance(event, RunFinished | RunError):
                break
        with pytest.raises(StopAsyncIteration):
            await stream.__anext__()


# --------------------------------------------------------------------- failures


@pytest.mark.anyio
async def test_backend_failure_mid_stream_is_a_backend_error_with_the_partial_answer() -> None:
    backend = ScriptedBackend(
        replies=["abcdefghijkl"], token_size=4, fail_after=2, failure_message="server went away"
    )
    events = await collect(stream_chat(backend, PROMPT))
    terminal = assert_well_formed(events)
    assert terminal == RunError(message="server went away", code="backend", answer="abcdefgh")
    assert not any(isinstance(e, RunFinished) for e in events)


@pytest.mark.anyio
async def test_backend_failure_before_any_text() -> None:
    backend = ScriptedBackend(replies=["abc"], fail_after=0)
    events = await collect(stream_chat(backend, PROMPT))
    assert [type(e) for e in events] == [RunStarted, RunError]
    terminal = events[-1]
    assert isinstance(terminal, RunError)
    assert terminal.code == "backend" and terminal.answer == ""


@pytest.mark.anyio
async def test_backend_failure_after_all_text_is_still_an_error() -> None:
    backend = ScriptedBackend(replies=["abcd"], token_size=2, fail_after=2)
    terminal = assert_well_formed(await collect(stream_chat(backend, PROMPT)))
    assert isinstance(terminal, RunError)
    assert terminal.answer == "abcd"


# --------------------------------------------------------------------- leaving early


@pytest.mark.anyio
async def test_consumer_leaving_early_stops_generation() -> None:
    backend = ScriptedBackend(replies=["x" * 400], token_size=1)
    stream = stream_chat(backend, PROMPT)
    seen: list[Event] = []
    async for event in stream:
        seen.append(event)
        if isinstance(event, AnswerDelta):
            break
    await stream.aclose()
    (call,) = backend.calls
    assert call.abandoned
    assert not call.finished
    assert call.chunks_sent == 1
    assert [type(e) for e in seen] == [RunStarted, AnswerDelta]


@pytest.mark.anyio
async def test_aclosing_consumer_breaking_out_stops_generation() -> None:
    backend = ScriptedBackend(replies=["y" * 100], token_size=1, tokens_per_second=1000)
    async with aclosing(stream_chat(backend, PROMPT)) as stream:
        count = 0
        async for event in stream:
            count += isinstance(event, AnswerDelta)
            if count == 3:
                break
    assert backend.calls[0].abandoned
    assert backend.calls[0].chunks_sent == 3


@pytest.mark.anyio
async def test_task_cancellation_stops_generation() -> None:
    backend = ScriptedBackend(replies=["z" * 200], token_size=1, tokens_per_second=200)
    first = asyncio.Event()
    seen: list[Event] = []

    async def consume() -> None:
        async for event in stream_chat(backend, PROMPT):
            seen.append(event)
            if isinstance(event, AnswerDelta):
                first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (call,) = backend.calls
    assert call.abandoned
    assert not call.finished
    assert call.chunks_sent < 200
    sent = call.chunks_sent
    await asyncio.sleep(0.05)
    assert call.chunks_sent == sent, "generation went on after cancellation"
    assert not any(isinstance(e, RunFinished | RunError) for e in seen)


@pytest.mark.anyio
async def test_anyio_timeout_stops_generation() -> None:
    backend = ScriptedBackend(replies=["w" * 200], token_size=1, tokens_per_second=200)
    with anyio.move_on_after(0.1) as scope:
        await collect(stream_chat(backend, PROMPT))
    assert scope.cancelled_caught
    assert backend.calls[0].abandoned
    assert backend.calls[0].chunks_sent < 200


# --------------------------------------------------------------------- pacing


@pytest.mark.anyio
async def test_paced_deltas_arrive_as_they_are_produced() -> None:
    n, rate = 10, 100.0
    backend = ScriptedBackend(replies=["abcdefghij"], token_size=1, tokens_per_second=rate)
    arrivals: list[float] = []
    produced_when_first_arrived: int | None = None
    started = time.monotonic()
    async with aclosing(stream_chat(backend, PROMPT)) as stream:
        async for event in stream:
            if isinstance(event, AnswerDelta):
                arrivals.append(time.monotonic() - started)
                if produced_when_first_arrived is None:
                    produced_when_first_arrived = backend.calls[0].chunks_sent
            elif isinstance(event, RunFinished):
                finished = event
    assert len(arrivals) == n
    # the first delta is in the consumer's hands before the backend has produced the second
    assert produced_when_first_arrived == 1
    # the last is due (n - 1) / rate after the first: the stream is paced, not buffered
    assert arrivals[-1] >= 0.9 * (n - 1) / rate
    assert arrivals[0] < arrivals[-1]
    assert finished.timings.first_token_s is not None
    assert finished.timings.first_token_s < finished.timings.total_s
    assert finished.timings.total_s >= 0.9 * (n - 1) / rate
