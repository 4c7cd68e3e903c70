"""The agent loop against the scripted backend: JSON and native tool protocols, answer
streaming, malformed output, iteration limits, tool failures, memory on every path, stream
modes, logging, and the one-terminal-event invariant (checked on every run by `collect`)."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenrelay.agent.loop import Agent
from tokenrelay.agent.prompts import FINAL_CALL_MESSAGE, FORCED_STOP_MESSAGE
from tokenrelay.backends.base import GenerationSettings, ModelChunk, ThinkingChunk, ToolCallChunk
from tokenrelay.events import (
    AnswerDelta,
    Event,
    Narration,
    ReasoningDelta,
    RunError,
    RunFinished,
    RunStarted,
    ToolCallFinished,
    ToolCallStarted,
)
from tokenrelay.memory import InMemorySessionStore, SQLiteSessionStore
from tokenrelay.messages import Message, ToolCall, ToolSpec
from tokenrelay.testing import ScriptedBackend, check_events, final_answer, shown_text
from tokenrelay.tools import calculator, tool

SQRT71 = "8.42614977317636"
TRICKY = 'He said "hi" {braces} }] \\ back\nslash\t日本語のテキスト 🎉👍🏽 end'


Store = InMemorySessionStore | SQLiteSessionStore


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    s: Store = (
        InMemorySessionStore() if request.param == "memory" else SQLiteSessionStore(tmp_path / "db.sqlite")
    )
    yield s
    await s.close()


# ----------------------------------------------------------------------------- helpers


def action(name: str, action_input: Any, *, ascii: bool = False, input_first: bool = False) -> str:
    obj = (
        {"action_input": action_input, "action": name}
        if input_first
        else {"action": name, "action_input": action_input}
    )
    return json.dumps(obj, ensure_ascii=ascii)


def final(text: str, **kw: Any) -> str:
    return action("Final Answer", text, **kw)


CALC = action("Calculator", "sqrt(71)")


def check_stream(events: Sequence[Event], *, complete: bool = True) -> None:
    check_events(events, complete=complete)


async def collect(agent: Agent, text: str, **kw: Any) -> list[Event]:
    async with aclosing(agent.run(text, **kw)) as stream:
        events = [e async for e in stream]
    check_stream(events)
    return events


def answer_of(events: Sequence[Event]) -> str:
    """The final answer as a typed consumer shows it (narration re-labelled)."""
    return final_answer(events)


def deltas(events: Sequence[Event]) -> list[str]:
    return [e.text for e in events if isinstance(e, AnswerDelta)]


def shape(events: Sequence[Event]) -> list[str]:
    """Event types, with runs of deltas collapsed to one."""
    out: list[str] = []
    for e in events:
        if out and out[-1] == e.type and e.type in ("answer_delta", "reasoning_delta"):
            continue
        out.append(e.type)
    return out


def of_type(events: Sequence[Event], cls: type[Any]) -> list[Any]:
    return [e for e in events if isinstance(e, cls)]


def finished(events: Sequence[Event]) -> RunFinished:
    last = events[-1]
    assert isinstance(last, RunFinished), last
    return last


@dataclass
class ProbingBackend(ScriptedBackend):
    """A scripted backend that awaits `probe(messages)` before each reply."""

    probe: Callable[[Sequence[Message]], Awaitable[None]] | None = None

    async def stream(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[ToolSpec] | None = None,
        settings: GenerationSettings = GenerationSettings(),
    ) -> AsyncGenerator[ModelChunk, None]:
        if self.probe is not None:
            await self.probe(messages)
        async with aclosing(super().stream(messages, tools=tools, settings=settings)) as chunks:
            async for chunk in chunks:
                yield chunk


def echo_last(messages: Sequence[Message]) -> str:
    """A reply repeating the user's (last) message."""
    return final("A:" + messages[-1].content)


def echo_prompts(messages: Sequence[Message]) -> str:
    """A reply naming every user message in the prompt (system/tool text excluded)."""
    return final(" | ".join(m.content for m in messages if m.role == "user"))


# ----------------------------------------------------------------------------- JSON protocol


@pytest.mark.anyio
async def test_json_tool_call_then_final_answer() -> None:
    answer = "The square root of 71 is about 8.426."
    backend = ScriptedBackend([CALC, final(answer)])
    agent = Agent(backend)
    assert agent.tool_protocol == "json"
    events = await collect(agent, "What is the square root of 71?")

    assert shape(events) == [
        "run_started",
        "tool_call_started",
        "tool_call_finished",
        "answer_delta",
        "run_finished",
    ]
    started, done = of_type(events, ToolCallStarted)[0], of_type(events, ToolCallFinished)[0]
    assert (started.name, started.arguments) == ("Calculator", "sqrt(71)")
    assert (done.call_id, done.name, done.result, done.error) == (started.call_id, "Calculator", SQRT71, None)
    assert finished(events).answer == answer == answer_of(events)
    assert isinstance(events[0], RunStarted) and events[0].model == "scripted"

    assert len(backend.calls) == 2
    first, second = backend.calls
    schema = first.settings.json_schema
    assert schema is not None and schema["properties"]["action"]["enum"] == ["Calculator", "Final Answer"]
    assert first.messages[0].role == "system" and "Calculator" in first.messages[0].content
    assert first.messages[-1] == Message.user("What is the square root of 71?")
    assert second.messages[-2] == Message.assistant(CALC)
    assert second.messages[-1].role == "user" and SQRT71 in second.messages[-1].content
    usage = finished(events).usage
    assert usage.completion_tokens == sum(c.chunks_sent for c in backend.calls)


@pytest.mark.anyio
@pytest.mark.parametrize("ascii", [False, True])
@pytest.mark.parametrize("token_size", [1, 3, 4, 7])
async def test_answer_deltas_are_exact(ascii: bool, token_size: int) -> None:
    backend = ScriptedBackend([final(TRICKY, ascii=ascii)], token_size=token_size)
    events = await collect(Agent(backend), "say something tricky")
    assert answer_of(events) == TRICKY
    assert finished(events).answer == TRICKY


@pytest.mark.anyio
async def test_answer_streams_incrementally() -> None:
    backend = ScriptedBackend([final("one two three four five six seven eight nine ten")])
    agent = Agent(backend)
    pieces: list[str] = []
    finished_when_first_delta: bool | None = None
    async with aclosing(agent.run("count")) as stream:
        async for e in stream:
            if isinstance(e, AnswerDelta):
                if finished_when_first_delta is None:
                    finished_when_first_delta = backend.calls[-1].finished
                pieces.append(e.text)
    assert finished_when_first_delta is False, "the first delta arrives while the model is still writing"
    assert len(pieces) >= 5
    assert "".join(pieces) == "one two three four five six seven eight nine ten"


@pytest.mark.anyio
async def test_action_input_before_action() -> None:
    backend = ScriptedBackend(
        [action("Calculator", "2 + 2", input_first=True), final('four, with a "quote"', input_first=True)]
    )
    events = await collect(Agent(backend), "2+2?")
    assert of_type(events, ToolCallStarted)[0].arguments == "2 + 2"
    assert of_type(events, ToolCallFinished)[0].result == "4"
    assert finished(events).answer == 'four, with a "quote"' == answer_of(events)


@pytest.mark.anyio
async def test_plain_text_reply_is_the_answer() -> None:
    events = await collect(Agent(ScriptedBackend(["Just a plain reply."])), "hi")
    assert finished(events).answer == "Just a plain reply."


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("bad", "problem", "policy"),
    [
        ('{"action" "Calculator"}', "expected ':'", "stream"),
        ('{"action" "Calculator"}', "expected ':'", "hold"),
        ("Sure! {not json at all}", "not valid JSON", "hold"),
        ('{"action_input": "sqrt(2)"}', 'missing "action"', "stream"),
        ('{"action_input": "sqrt(2)"}', 'missing "action"', "hold"),
        ('{"action": "Calculator", "action_input": "sqrt(2)"', "unterminated", "stream"),
        ('{"action": "Calculator", "action_input": "sqrt(2)"', "unterminated", "hold"),
    ],
)
async def test_malformed_action_gets_feedback_then_recovers(bad: str, problem: str, policy: Any) -> None:
    """An attempt at an action block that is malformed is reported to the model, never shown;
    with `hold`, so is any output with a brace that is not a valid action."""
    backend = ScriptedBackend([bad, final("recovered")])
    events = await collect(Agent(backend, answer_policy=policy), "question")
    assert finished(events).answer == "recovered"
    assert not of_type(events, ToolCallStarted)
    assert len(backend.calls) == 2
    retry = backend.calls[1].messages
    assert retry[-2] == Message.assistant(bad)
    assert retry[-1].role == "user"
    assert "could not be used" in retry[-1].content and problem in retry[-1].content


@pytest.mark.anyio
async def test_unknown_tool_lists_the_tools() -> None:
    backend = ScriptedBackend([action("Search", "weather in Paris"), final("ok")])
    events = await collect(Agent(backend), "weather?")
    done = of_type(events, ToolCallFinished)[0]
    assert done.name == "Search" and done.result is None
    assert done.error is not None and "'Search'" in done.error and "Calculator" in done.error
    observation = backend.calls[1].messages[-1].content
    assert "Error: there is no tool named 'Search'" in observation and "Calculator" in observation
    assert finished(events).answer == "ok"


# ----------------------------------------------------------------------------- iteration limit


@pytest.mark.anyio
async def test_max_iterations_generate_makes_one_final_call() -> None:
    backend = ScriptedBackend([CALC, CALC, final("Best guess: 8.43 — " + TRICKY)])
    agent = Agent(backend, max_iterations=2, early_stopping_method="generate")
    events = await collect(agent, "sqrt 71?")
    assert len(backend.calls) == 2 + 1
    assert len(of_type(events, ToolCallFinished)) == 2
    for call in backend.calls[:2]:
        assert call.settings.json_schema is not None
        assert call.settings.json_schema["properties"]["action"]["enum"] == ["Calculator", "Final Answer"]
    last = backend.calls[2]
    assert last.settings.json_schema is not None
    assert last.settings.json_schema["properties"]["action"]["enum"] == ["Final Answer"]
    assert last.settings.json_schema["properties"]["action_input"] == {"type": "string"}
    assert last.messages[-1] == Message.user(FINAL_CALL_MESSAGE)
    assert finished(events).answer == "Best guess: 8.43 — " + TRICKY == answer_of(events)
    assert len(deltas(events)) > 3


@pytest.mark.anyio
async def test_max_iterations_generate_always_answers() -> None:
    backend = ScriptedBackend([CALC, final("")])  # the last call answers with nothing
    agent = Agent(backend, max_iterations=1, early_stopping_method="generate")
    events = await collect(agent, "sqrt 71?")
    assert len(backend.calls) == 2
    assert finished(events).answer == FORCED_STOP_MESSAGE


@pytest.mark.anyio
async def test_final_call_never_runs_a_tool() -> None:
    backend = ScriptedBackend([CALC])  # a backend that ignores the final-only schema
    agent = Agent(backend, max_iterations=2, early_stopping_method="generate")
    events = await collect(agent, "sqrt 71?")
    assert len(backend.calls) == 3
    assert finished(events).answer == FORCED_STOP_MESSAGE
    assert len(of_type(events, ToolCallStarted)) == 2


@pytest.mark.anyio
@pytest.mark.parametrize("max_iterations", [1, 3])
async def test_max_iterations_force(max_iterations: int) -> None:
    backend = ScriptedBackend([CALC])
    agent = Agent(backend, max_iterations=max_iterations, early_stopping_method="force")
    events = await collect(agent, "sqrt 71?")
    assert len(backend.calls) == max_iterations
    assert len(of_type(events, ToolCallFinished)) == max_iterations
    assert (
        finished(events).answer
        == FORCED_STOP_MESSAGE
        == "Agent stopped due to iteration limit or time limit."
    )
    assert answer_of(events) == FORCED_STOP_MESSAGE


def test_agent_rejects_bad_configuration() -> None:
    with pytest.raises(ValueError, match="max_iterations"):
        Agent(ScriptedBackend(), max_iterations=0)
    with pytest.raises(ValueError, match="early_stopping_method"):
        Agent(ScriptedBackend(), early_stopping_method="stop")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- tool failures


@pytest.mark.anyio
async def test_tool_that_raises() -> None:
    @tool
    def explode(text: str) -> str:
        """Always fails."""
        raise RuntimeError("kaboom")

    backend = ScriptedBackend([action("explode", "now"), final("it failed")])
    events = await collect(Agent(backend, tools=[explode]), "try it")
    done = of_type(events, ToolCallFinished)[0]
    assert done.result is None and done.error == "RuntimeError: kaboom"
    assert "Error: RuntimeError: kaboom" in backend.calls[1].messages[-1].content
    assert finished(events).answer == "it failed"


@pytest.mark.anyio
async def test_tool_that_hangs_times_out() -> None:
    @tool
    async def hang(text: str) -> str:
        """Never returns."""
        await asyncio.sleep(60)
        return text

    backend = ScriptedBackend([action("hang", "x"), final("gave up")])
    start = time.perf_counter()
    events = await collect(Agent(backend, tools=[hang], tool_timeout_s=0.2), "go")
    assert time.perf_counter() - start < 1.0
    assert of_type(events, ToolCallFinished)[0].error == "hang timed out after 0.2 s"
    assert "Error: hang timed out after 0.2 s" in backend.calls[1].messages[-1].content
    assert finished(events).answer == "gave up"


@pytest.mark.anyio
async def test_sync_tool_runs_in_a_thread() -> None:
    where: list[bool] = []

    @tool
    def blocking(text: str) -> str:
        """Blocking work."""
        where.append(threading.current_thread() is threading.main_thread())
        time.sleep(0.02)
        return text.upper()

    backend = ScriptedBackend([action("blocking", "abc"), final("done")])
    events = await collect(Agent(backend, tools=[blocking]), "go")
    assert where == [False]
    assert of_type(events, ToolCallFinished)[0].result == "ABC"


@pytest.mark.anyio
async def test_user_tool_with_structured_input() -> None:
    @tool
    def convert(amount: float, currency: str, rounding: int = 2) -> str:
        """Convert money."""
        return f"{amount:.{rounding}f} {currency}"

    backend = ScriptedBackend(
        [
            action("convert", {"amount": "lots"}),
            action("convert", {"amount": 3, "currency": "EUR"}),
            final("3.00 EUR"),
        ]
    )
    agent = Agent(backend, tools=[convert])
    events = await collect(agent, "convert")
    schema = backend.calls[0].settings.json_schema
    assert schema is not None and schema["properties"]["action_input"] == {}  # any JSON value
    first, second = of_type(events, ToolCallFinished)
    assert first.error is not None and first.error.startswith("invalid input for convert:")
    assert second.result == "3.00 EUR"
    assert "Error: invalid input for convert" in backend.calls[1].messages[-1].content
    assert of_type(events, ToolCallStarted)[1].arguments == {"amount": 3, "currency": "EUR"}


def test_agent_rejects_duplicate_tool_names() -> None:
    @tool(name="Calculator")
    def other(expression: str) -> str:
        return expression

    with pytest.raises(ValueError, match="duplicate tool names"):
        Agent(ScriptedBackend(), tools=[calculator, other])


# ----------------------------------------------------------------------------- native protocol


def native_tool_reply(text: str = "Let me compute that. ") -> list[str | ModelChunk]:
    return [
        text[:8],
        text[8:],
        ToolCallChunk(0, "call_abc", "Calculator", ""),
        ToolCallChunk(0, arguments='{"expr'),
        ToolCallChunk(0, arguments='ession": "sq'),
        ToolCallChunk(0, arguments='rt(71)"}'),
    ]


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["final", "full"])
@pytest.mark.parametrize("policy", ["stream", "hold"])
async def test_native_tool_calls(mode: str, policy: Any) -> None:
    answer_chunks = ["The square ", "root of 71 ", "is 8.426 ", TRICKY]
    backend = ScriptedBackend([native_tool_reply(), answer_chunks], native_tools=True)
    agent = Agent(backend, answer_policy=policy)
    assert agent.tool_protocol == "native"
    events = await collect(agent, "sqrt 71?", mode=mode)

    started = of_type(events, ToolCallStarted)
    assert [(s.call_id, s.name, s.arguments) for s in started] == [
        ("call_abc", "Calculator", '{"expression": "sqrt(71)"}')
    ]
    assert of_type(events, ToolCallFinished)[0].result == SQRT71
    assert finished(events).answer == "".join(answer_chunks) == answer_of(events)
    reasoning = "".join(e.text for e in of_type(events, ReasoningDelta))
    if policy == "hold":  # the narration never reached the answer; it is reasoning in full mode
        assert all("Let me" not in d for d in deltas(events))
        assert reasoning == ("Let me compute that. " if mode == "full" else "")
        assert not of_type(events, Narration)
    else:  # streamed as it came, then re-labelled: shown once, in order, never in the answer
        assert deltas(events)[:2] == ["Let me c", "ompute that. "]
        assert [n.text for n in of_type(events, Narration)] == ["Let me compute that. \n\n"]
        assert shown_text(events) == "Let me compute that. \n\n" + "".join(answer_chunks)
        assert reasoning == ""
        narration_at = next(i for i, e in enumerate(events) if isinstance(e, Narration))
        assert isinstance(events[narration_at + 1], ToolCallStarted)

    first, second = backend.calls
    assert [t.name for t in first.tools] == ["Calculator"]
    assert first.settings.json_schema is None
    assert second.messages[-2] == Message.assistant(
        "Let me compute that. ",
        (ToolCall(id="call_abc", name="Calculator", arguments='{"expression": "sqrt(71)"}'),),
    )
    assert second.messages[-1] == Message(role="tool", content=SQRT71, tool_call_id="call_abc")


@pytest.mark.anyio
async def test_native_parallel_tool_calls_and_generated_id() -> None:
    reply: list[str | ModelChunk] = [
        ToolCallChunk(0, None, "Calculator", '{"expression": "1+1"}'),
        ToolCallChunk(1, "call_2", "Calculator", '{"expression":'),
        ToolCallChunk(1, arguments=' "2*3"}'),
    ]
    backend = ScriptedBackend([reply, ["2 and 6"]], native_tools=True)
    events = await collect(Agent(backend), "two sums")
    results = [e.result for e in of_type(events, ToolCallFinished)]
    assert results == ["2", "6"]
    ids = [e.call_id for e in of_type(events, ToolCallStarted)]
    assert ids[0].startswith("call_") and ids[1] == "call_2"
    tool_messages = [m for m in backend.calls[1].messages if m.role == "tool"]
    assert [(m.tool_call_id, m.content) for m in tool_messages] == [(ids[0], "2"), ("call_2", "6")]
    assert finished(events).answer == "2 and 6"


@pytest.mark.anyio
async def test_native_max_iterations_generate() -> None:
    backend = ScriptedBackend([native_tool_reply(), ["Final ", "answer ", "streams."]], native_tools=True)
    events = await collect(Agent(backend, max_iterations=1), "sqrt 71?")
    assert len(backend.calls) == 2
    assert backend.calls[1].tools == []  # no tools on offer: the text is the answer
    assert backend.calls[1].messages[-1] == Message.user(FINAL_CALL_MESSAGE)
    assert deltas(events)[-3:] == ["Final ", "answer ", "streams."]
    assert finished(events).answer == "Final answer streams."


@pytest.mark.anyio
async def test_native_thinking_only_in_full_mode() -> None:
    reply: list[str | ModelChunk] = [ThinkingChunk("hmm, easy"), "Hello!"]
    for mode, expected in (("final", ""), ("full", "hmm, easy")):
        backend = ScriptedBackend([reply], native_tools=True)
        events = await collect(Agent(backend), "hi", mode=mode)
        assert "".join(e.text for e in of_type(events, ReasoningDelta)) == expected
        assert finished(events).answer == "Hello!"


# ----------------------------------------------------------------------------- memory


@pytest.mark.anyio
async def test_history_window(store: Store) -> None:
    await store.create_session(session_id="s1")
    backend = ScriptedBackend(echo_last)
    agent = Agent(backend, store=store, memory_k=2)
    for q in ("q1", "q2", "q3", "q4"):
        await collect(agent, q, session_id="s1")
    prompt = backend.calls[-1].messages
    assert prompt[0].role == "system"
    assert [(m.role, m.content) for m in prompt[1:]] == [
        ("user", "q2"),
        ("assistant", "A:q2"),
        ("user", "q3"),
        ("assistant", "A:q3"),
        ("user", "q4"),
    ]
    turns = await store.history("s1")
    assert [(t.user_text, t.answer, t.status) for t in turns] == [
        (q, "A:" + q, "complete") for q in ("q1", "q2", "q3", "q4")
    ]


@pytest.mark.anyio
async def test_memory_off_and_stateless_history(store: Store) -> None:
    await store.create_session(session_id="s1")
    backend = ScriptedBackend(echo_prompts)
    agent = Agent(backend, store=store, memory_k=0)
    await collect(agent, "first", session_id="s1")
    events = await collect(agent, "second", session_id="s1", history=[("given q", "given a")])
    assert finished(events).answer == "given q | second"
    assert len(await store.history("s1")) == 2  # still stored, just not recalled


@pytest.mark.anyio
async def test_user_message_is_stored_before_the_model_runs(store: Store) -> None:
    await store.create_session(session_id="s1")
    seen: list[tuple[str, str, str]] = []

    async def probe(messages: Sequence[Message]) -> None:
        seen.extend((t.user_text, t.status, t.answer) for t in await store.history("s1"))

    backend = ProbingBackend([final("stored answer")], probe=probe)
    events = await collect(Agent(backend, store=store), "remember me", session_id="s1")
    assert seen == [("remember me", "running", "")]
    (turn,) = await store.history("s1")
    assert (turn.user_text, turn.answer, turn.status, turn.error) == (
        "remember me",
        "stored answer",
        "complete",
        None,
    )
    assert turn.run_id and turn.finished_at is not None
    assert isinstance(events[0], RunStarted) and events[0].session_id == "s1"


@pytest.mark.anyio
async def test_backend_failure_mid_answer(store: Store) -> None:
    await store.create_session(session_id="s1")
    answer = "The quick brown fox jumps over the lazy dog."
    backend = ScriptedBackend([final(answer)], fail_after=14, token_size=4)
    events = await collect(Agent(backend, store=store), "fox?", session_id="s1")
    error = events[-1]
    assert isinstance(error, RunError)
    assert (error.code, error.message) == ("backend", "scripted backend failure")
    partial = answer_of(events)
    assert partial and answer.startswith(partial) and partial != answer
    assert error.answer == partial
    (turn,) = await store.history("s1")
    assert (turn.status, turn.answer, turn.error) == ("failed", partial, "scripted backend failure")


@pytest.mark.anyio
async def test_consumer_leaves_mid_stream(store: Store) -> None:
    await store.create_session(session_id="s1")
    backend = ScriptedBackend([final("a long answer, " * 20)])
    received: list[Event] = []
    async with aclosing(Agent(backend, store=store).run("talk", session_id="s1")) as stream:
        async for e in stream:
            received.append(e)
            if len(deltas(received)) == 3:
                break
    check_stream(received, complete=False)
    (turn,) = await store.history("s1")
    assert (turn.status, turn.answer) == ("interrupted", answer_of(received))
    for _ in range(10):  # the backend's stream is closed (at the latest, by the loop's finalizers)
        if backend.calls[-1].abandoned:
            break
        await asyncio.sleep(0)
    assert backend.calls[-1].abandoned


@pytest.mark.anyio
async def test_aclose_closes_the_backend_stream_at_once() -> None:
    backend = ScriptedBackend([final("a long answer, " * 20)])
    async with aclosing(Agent(backend).run("talk")) as stream:
        async for e in stream:
            if isinstance(e, AnswerDelta):
                break
    assert backend.calls[-1].abandoned


@pytest.mark.anyio
async def test_task_cancellation(store: Store) -> None:
    await store.create_session(session_id="s1")
    backend = ScriptedBackend([final("a slow answer, " * 20)], tokens_per_second=400)
    received: list[Event] = []
    three = asyncio.Event()

    async def consume() -> None:
        async for e in Agent(backend, store=store).run("talk", session_id="s1"):
            received.append(e)
            if len(deltas(received)) >= 3:
                three.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(three.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    check_stream(received, complete=False)
    (turn,) = await store.history("s1")
    assert turn.status == "interrupted"
    assert turn.answer == answer_of(received) and len(turn.answer) > 0
    assert backend.calls[-1].abandoned


class SlowSQLiteStore(SQLiteSessionStore):
    """SQLite whose `finish_turn` takes a moment (a busy disk, a remote database)."""

    async def finish_turn(self, turn_id: int, **kw: Any) -> None:
        await asyncio.sleep(0.02)
        await super().finish_turn(turn_id, **kw)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "kind",
    [
        "memory",
        "slow-sqlite",
    ],
)
async def test_anyio_cancel_scope_still_stores_the_turn(kind: str, tmp_path: Path) -> None:
    store: Store = InMemorySessionStore() if kind == "memory" else SlowSQLiteStore(tmp_path / "db.sqlite")
    try:
        await store.create_session(session_id="s1")
        backend = ScriptedBackend([final("a slow answer, " * 20)], tokens_per_second=400)
        received: list[Event] = []
        with anyio.move_on_after(0.1):
            async with aclosing(Agent(backend, store=store).run("talk", session_id="s1")) as stream:
                async for e in stream:
                    received.append(e)
        (turn,) = await store.history("s1")
        assert (turn.status, turn.answer) == ("interrupted", answer_of(received))
        assert deltas(received)
    finally:
        await store.close()


@pytest.mark.anyio
async def test_missing_session_ends_with_an_error(store: Store) -> None:
    backend = ScriptedBackend([final("never")])
    events = await collect(Agent(backend, store=store), "hello?", session_id="nope")
    assert isinstance(events[-1], RunError)
    assert backend.calls == []


class BrokenFinishStore(InMemorySessionStore):
    """A store whose final write fails (disk full, database gone)."""

    async def finish_turn(self, turn_id: int, **kw: Any) -> None:
        raise RuntimeError("disk full")


@pytest.mark.anyio
async def test_store_failure_at_the_end_still_ends_the_stream() -> None:
    store = BrokenFinishStore()
    await store.create_session(session_id="s1")
    events = await collect(Agent(ScriptedBackend([final("ok")]), store=store), "hi", session_id="s1")
    assert isinstance(events[-1], RunFinished | RunError)


@pytest.mark.anyio
async def test_concurrent_sessions_are_isolated(store: Store) -> None:
    backend = ScriptedBackend(echo_prompts, tokens_per_second=2000, token_size=3)
    agent = Agent(backend, store=store)
    n = 20
    for i in range(n):
        await store.create_session(session_id=f"s{i}")
    results: dict[tuple[int, int], list[Event]] = {}

    async def one(i: int, round_: int) -> None:
        results[i, round_] = await collect(agent, f"question {i}.{round_}", session_id=f"s{i}")

    for round_ in (1, 2):
        async with anyio.create_task_group() as tg:
            for i in range(n):
                tg.start_soon(one, i, round_)
    for i in range(n):
        assert finished(results[i, 1]).answer == f"question {i}.1"
        assert finished(results[i, 2]).answer == f"question {i}.1 | question {i}.2"
        turns = await store.history(f"s{i}")
        assert [(t.user_text, t.answer, t.status) for t in turns] == [
            (f"question {i}.1", f"question {i}.1", "complete"),
            (f"question {i}.2", f"question {i}.1 | question {i}.2", "complete"),
        ]


@pytest.mark.anyio
async def test_session_document_reaches_the_prompt(store: Store) -> None:
    await store.create_session(session_id="s1")
    await store.set_document("s1", name="notes.txt", text="The secret word is pineapple.")
    backend = ScriptedBackend([final("pineapple")])
    await collect(Agent(backend, store=store), "secret?", session_id="s1")
    assert "The secret word is pineapple." in backend.calls[0].messages[0].content


# ----------------------------------------------------------------------------- modes, steps, logs


@pytest.mark.anyio
async def test_full_mode_emits_raw_output_as_reasoning() -> None:
    replies = [CALC, final("done " + TRICKY)]
    events = await collect(Agent(ScriptedBackend(replies)), "go", mode="full")
    assert "".join(e.text for e in of_type(events, ReasoningDelta)) == "".join(replies)
    assert finished(events).answer == "done " + TRICKY


@pytest.mark.anyio
async def test_final_mode_emits_no_reasoning() -> None:
    events = await collect(Agent(ScriptedBackend([CALC, final("done")])), "go", mode="final")
    assert not of_type(events, ReasoningDelta)
    assert finished(events).answer == "done"


@pytest.mark.anyio
async def test_intermediate_steps() -> None:
    replies = [CALC, action("Nope", "x"), final("done")]
    events = await collect(Agent(ScriptedBackend(replies), return_intermediate_steps=True), "go")
    steps = finished(events).intermediate_steps
    assert steps[0] == ("Calculator", "sqrt(71)", SQRT71)
    assert steps[1][:2] == ("Nope", "x") and steps[1][2].startswith("Error: there is no tool named 'Nope'")
    events = await collect(Agent(ScriptedBackend(replies)), "go")
    assert finished(events).intermediate_steps == ()


@pytest.mark.anyio
@pytest.mark.parametrize("verbose", [True, False])
async def test_verbose_logs_steps(verbose: bool, caplog: pytest.LogCaptureFixture) -> None:
    replies = ['{"action": oops', CALC, final("Done.")]
    with caplog.at_level(logging.INFO, logger="tokenrelay.agent"):
        events = await collect(Agent(ScriptedBackend(replies), verbose=verbose), "go")
    assert finished(events).answer == "Done." == answer_of(events)
    messages = [r.getMessage() for r in caplog.records if r.name == "tokenrelay.agent"]
    if verbose:
        assert any("Calculator" in m and SQRT71 in m for m in messages)
        assert any("unusable model output" in m for m in messages)
    else:
        assert messages == []


# ----------------------------------------------------------------------------- property


def split_at(text: str, cuts: Sequence[int]) -> list[str]:
    bounds = [0, *sorted({min(c, len(text)) for c in cuts}), len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if b > a]


@settings(max_examples=200, deadline=None)
@given(
    answer=st.text(),
    ascii=st.booleans(),
    input_first=st.booleans(),
    cuts=st.lists(st.integers(0, 400), max_size=40),
)
def test_any_answer_any_chunking(answer: str, ascii: bool, input_first: bool, cuts: list[int]) -> None:
    raw = final(answer, ascii=ascii, input_first=input_first)
    chunks = split_at(raw, [c * len(raw) // 400 for c in cuts])
    assert "".join(chunks) == raw
    events = asyncio.run(collect(Agent(ScriptedBackend([chunks])), "anything"))
    assert answer_of(events) == answer
    assert finished(events).answer == answer
