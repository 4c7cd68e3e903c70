"""Token-by-token answers on every protocol (issue 11), at the generator level.

The `stream` answer policy (the default) sends answer text the moment the model writes it:
native tool-call messages and JSON-protocol prose included. Text that turns out to precede an
action is re-labelled by a `Narration` event and never lost, duplicated or counted in the final
answer. `hold` keeps the old exact-but-late behaviour. Cut-off answers say `length`.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import aclosing
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replies import final as final_action
from tokenrelay.agent.loop import Agent
from tokenrelay.agent.prose import ProseStreamer
from tokenrelay.backends.base import FinishChunk, ModelChunk, TextChunk, ToolCallChunk
from tokenrelay.events import AnswerDelta, Event, Narration, RunFinished, ToolCallStarted
from tokenrelay.memory import InMemorySessionStore, SQLiteSessionStore
from tokenrelay.testing import ScriptedBackend, check_events, final_answer, shown_text

TRICKY = 'He said "hi" {braces} }] \\ back\nslash\t日本語のテキスト 🎉👍🏽 end'


async def collect(agent: Agent, text: str = "q", **kw: Any) -> list[Event]:
    async with aclosing(agent.run(text, **kw)) as stream:
        events = [e async for e in stream]
    check_events(events)
    return events


def split_at(text: str, cuts: Sequence[int]) -> list[str]:
    bounds = [0, *sorted({min(c, len(text)) for c in cuts}), len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


def run_streamer(chunks: Sequence[str]) -> tuple[str, ProseStreamer, str]:
    """Feed chunks; return (prose emitted, the streamer, answer text the action block decoded)."""
    streamer = ProseStreamer()
    prose: list[str] = []
    answer: list[str] = []
    for chunk in chunks:
        if streamer.extractor is not None:
            answer.append(streamer.extractor.feed(chunk))
            continue
        prose.append(streamer.feed(chunk))
        if streamer.extractor is not None:
            answer.append(streamer.action_text)
    prose.append(streamer.finish())
    if streamer.extractor is not None:
        if not answer:
            answer.append(streamer.action_text)
        answer.append(streamer.extractor.finish())
    return "".join(prose), streamer, "".join(answer)


# Prose made of the characters that matter: braces, backticks, quotes, escapes, blank space.
PROSE_ALPHABET = st.sampled_from(
    list('ab {}[]`"\\:,\n\t ') + ["json", "```", "```json\n", "日本語", "🎉", "👍🏽", "x = {1: 2}", "{}"]
)
prose_text = st.lists(PROSE_ALPHABET, max_size=40).map("".join).filter(lambda t: '"action' not in t)
cuts = st.lists(st.integers(min_value=0, max_value=400), max_size=25)


# ----------------------------------------------------------------------------- ProseStreamer


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(prose=prose_text, cut=cuts)
def test_prose_without_an_action_streams_exactly(prose: str, cut: list[int]) -> None:
    emitted, streamer, _ = run_streamer(split_at(prose, cut))
    assert streamer.extractor is None
    assert emitted == (prose if prose.strip() else "")


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    before=prose_text,
    answer=st.text(max_size=30),
    fence=st.sampled_from(["", "```json\n", "```\n", "```JSON\n  "]),
    cut=cuts,
)
def test_action_after_prose_never_leaks_scaffolding(
    before: str, answer: str, fence: str, cut: list[int]
) -> None:
    raw = before + fence + final_action(answer) + ("\n```" if fence else "")
    emitted, streamer, decoded = run_streamer(split_at(raw, cut))
    assert streamer.extractor is not None, "the action block is recognized"
    assert decoded == answer
    assert streamer.prefix + streamer.extractor.raw == raw
    # what streamed before the block is prose the model wrote; none of the block reached it
    assert (before + fence).startswith(emitted)
    assert '"action' not in emitted


@pytest.mark.parametrize(
    ("raw", "prose"),
    [
        ("The set {1, 2} has two elements.", "The set {1, 2} has two elements."),
        ("LaTeX: \\frac{a}{b}", "LaTeX: \\frac{a}{b}"),
        ('A dict: {"name": "x"} done', 'A dict: {"name": "x"} done'),
        ("```python\nprint({1})\n```", "```python\nprint({1})\n```"),
        ("Use `code` and ``more``.", "Use `code` and ``more``."),
        ("ends with a fence ```", "ends with a fence ```"),
        ("```json\nnot an object\n```", "```json\nnot an object\n```"),
        ("  \n\n  padded  \n\n", "  \n\n  padded  \n\n"),
        ("  \n ", ""),
    ],
)
def test_braces_and_fences_that_are_not_actions_are_prose(raw: str, prose: str) -> None:
    for size in (1, 2, 3, 7, 100):
        emitted, streamer, _ = run_streamer([raw[i : i + size] for i in range(0, len(raw), size)])
        assert streamer.extractor is None
        assert emitted == prose
        assert (streamer.error is not None) == (not prose)


def test_prose_streams_as_it_arrives_and_holds_only_a_possible_action_start() -> None:
    streamer = ProseStreamer()
    assert streamer.feed(" \n") == ""  # leading whitespace waits for something else
    assert streamer.feed("Hello ") == " \nHello "
    assert streamer.feed("world") == "world"
    assert streamer.feed(" {") == " "  # the brace may open an action block
    assert streamer.feed('"na') == ""
    assert streamer.feed('me": 1} ok') == '{"name": 1} ok'  # no action key: prose after all
    assert streamer.feed(" ``") == " "  # the backticks may grow into a fence
    assert streamer.feed("`json\n") == ""
    assert streamer.feed('{"action": "Final Answer", "action_input": "A') == ""
    assert streamer.extractor is not None and streamer.action_text == "A"


# ----------------------------------------------------------------------------- JSON protocol


@pytest.mark.anyio
async def test_json_prose_answer_streams_token_by_token() -> None:
    prose = "Paris is the capital of France. It has {many} museums and `cafés`."
    chunks = [prose[i : i + 3] for i in range(0, len(prose), 3)]
    backend = ScriptedBackend([chunks])
    events = await collect(Agent(backend))
    deltas = [e for e in events if isinstance(e, AnswerDelta)]
    assert len(deltas) >= 0.9 * len(chunks)
    assert final_answer(events) == prose
    assert not any(isinstance(e, Narration) for e in events)


@pytest.mark.anyio
async def test_json_hold_policy_sends_prose_once_at_the_end() -> None:
    prose = "Paris is the capital of France."
    backend = ScriptedBackend([[prose[i : i + 3] for i in range(0, len(prose), 3)]])
    events = await collect(Agent(backend, answer_policy="hold"))
    assert [e.text for e in events if isinstance(e, AnswerDelta)] == [prose]


@pytest.mark.anyio
@pytest.mark.parametrize("fence", ["", "```json\n"])
async def test_json_prose_then_tool_action_is_narration(fence: str) -> None:
    first = "I will use the calculator." + fence + '{"action": "Calculator", "action_input": "2*21"}'
    backend = ScriptedBackend([first, final_action(TRICKY)])
    events = await collect(Agent(backend))
    narrations = [e for e in events if isinstance(e, Narration)]
    assert [n.text for n in narrations] == ["I will use the calculator.\n\n"]
    assert final_answer(events) == TRICKY == events[-1].answer  # type: ignore[union-attr]
    assert shown_text(events) == "I will use the calculator.\n\n" + TRICKY
    assert "action" not in shown_text(events)
    # the model gets its whole reply back, prose and block
    assert backend.calls[1].messages[-2].content == first


@pytest.mark.anyio
async def test_json_final_action_after_prose_keeps_only_the_action_as_answer() -> None:
    backend = ScriptedBackend(["Thinking it over. " + final_action("42")])
    events = await collect(Agent(backend))
    assert final_answer(events) == "42"
    assert shown_text(events) == "Thinking it over. \n\n42"


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(prose=prose_text, cut=cuts)
@pytest.mark.anyio
async def test_agent_json_prose_any_chunking_is_exact(prose: str, cut: list[int]) -> None:
    if not prose.strip():
        return  # blank output is an unusable reply, tested elsewhere
    backend = ScriptedBackend([split_at(prose, cut)])
    events = await collect(Agent(backend, tools=[]))
    assert final_answer(events) == prose
    assert shown_text(events) == prose


# ----------------------------------------------------------------------------- native protocol


def native_reply(text_chunks: Sequence[str], finish: str | None = None) -> list[str | ModelChunk]:
    reply: list[str | ModelChunk] = list(text_chunks)
    if finish is not None:
        reply.append(FinishChunk(finish))
    return reply


@pytest.mark.anyio
async def test_native_answer_streams_before_the_message_ends() -> None:
    """The first answer delta reaches the consumer while the model is still writing."""
    chunks = [f"w{i} " for i in range(20)]
    backend = ScriptedBackend([chunks], native_tools=True)
    agent = Agent(backend)
    async with aclosing(agent.run("q")) as stream:
        async for event in stream:
            if isinstance(event, AnswerDelta):
                assert backend.calls[0].chunks_sent == 1
                break


@pytest.mark.anyio
async def test_native_narration_then_tool_then_answer_in_order() -> None:
    reply: list[str | ModelChunk] = [
        "Let me ",
        "check.\n",
        ToolCallChunk(0, "c1", "Calculator", '{"expression": "6*7"}'),
    ]
    backend = ScriptedBackend([reply, ["It is ", "42."]], native_tools=True)
    events = await collect(Agent(backend))
    kinds = [e.type for e in events]
    assert kinds == [
        "run_started",
        "answer_delta",
        "answer_delta",
        "answer_delta",  # the blank line that separates narration from the answer
        "narration",
        "tool_call_started",
        "tool_call_finished",
        "answer_delta",
        "answer_delta",
        "run_finished",
    ]
    assert shown_text(events) == "Let me check.\n\nIt is 42."
    assert final_answer(events) == "It is 42." == events[-1].answer  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_native_whitespace_before_a_tool_call_is_relabelled_without_separator() -> None:
    reply: list[str | ModelChunk] = ["\n", ToolCallChunk(0, "c1", "Calculator", '{"expression": "1+1"}')]
    events = await collect(Agent(ScriptedBackend([reply, ["2"]], native_tools=True)))
    assert [e.text for e in events if isinstance(e, Narration)] == ["\n"]
    assert final_answer(events) == "2"


# ----------------------------------------------------------------------------- finish reason


@pytest.mark.anyio
@pytest.mark.parametrize("native", [True, False])
async def test_length_finish_reason_reaches_run_finished(native: bool) -> None:
    reply = (
        native_reply(["a cut ", "off answ"], finish="length")
        if native
        else [
            '{"action": "Final Answer", "action_input": "a cut off answ',
            FinishChunk("length"),
        ]
    )
    events = await collect(Agent(ScriptedBackend([reply], native_tools=native)))
    last = events[-1]
    assert isinstance(last, RunFinished)
    assert last.finish_reason == "length"
    assert last.answer == "a cut off answ"


@pytest.mark.anyio
async def test_a_stop_after_a_length_limited_tool_step_is_stop() -> None:
    reply: list[str | ModelChunk] = [
        ToolCallChunk(0, "c1", "Calculator", '{"expression": "1+1"}'),
        FinishChunk("length"),
    ]
    events = await collect(Agent(ScriptedBackend([reply, ["2"]], native_tools=True)))
    assert isinstance(events[-1], RunFinished) and events[-1].finish_reason == "stop"


# ----------------------------------------------------------------------------- the stored turn


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    s = InMemorySessionStore() if request.param == "memory" else SQLiteSessionStore(tmp_path / "db.sqlite")
    yield s
    await s.close()


@pytest.mark.anyio
async def test_stored_turn_agrees_with_the_event_stream(store: Any) -> None:
    await store.create_session(session_id="s1")
    reply: list[str | ModelChunk] = [
        "Let me compute.",
        ToolCallChunk(0, "c1", "Calculator", '{"expression": "6*7"}'),
    ]
    backend = ScriptedBackend(
        [reply, native_reply(["It is 42", " and more"], finish="length")], native_tools=True
    )
    events = await collect(Agent(backend, store=store), session_id="s1", mode="full")
    (turn,) = await store.history("s1")
    assert turn.answer == final_answer(events) == "It is 42 and more"
    assert turn.finish_reason == "length"
    narration = next(e for e in events if isinstance(e, Narration))
    started = next(e for e in events if isinstance(e, ToolCallStarted))
    assert list(turn.steps) == [
        {"type": "narration", "text": narration.text},
        {
            "type": "tool",
            "call_id": started.call_id,
            "name": "Calculator",
            "arguments": '{"expression": "6*7"}',
            "result": "42",
            "error": None,
        },
    ]


@pytest.mark.anyio
async def test_interrupted_turn_keeps_the_streamed_half(store: Any) -> None:
    await store.create_session(session_id="s1")
    chunks = [f"part{i} " for i in range(40)]
    backend = ScriptedBackend([chunks], native_tools=True)
    received: list[Event] = []
    async with aclosing(Agent(backend, store=store).run("q", session_id="s1")) as stream:
        async for event in stream:
            received.append(event)
            if sum(isinstance(e, AnswerDelta) for e in received) == 20:
                break
    (turn,) = await store.history("s1")
    assert turn.status == "interrupted"
    assert turn.answer == shown_text(received) == "".join(chunks[:20])
    assert turn.finish_reason is None


@pytest.mark.anyio
async def test_text_chunk_type_is_exact() -> None:
    """Every kind of tricky text survives native streaming byte for byte."""
    backend = ScriptedBackend([[TextChunk(c) for c in TRICKY]], native_tools=True)
    events = await collect(Agent(backend))
    assert final_answer(events) == TRICKY
