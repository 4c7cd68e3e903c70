"""The embedded agent on the real default model (SmolLM2-135M through llama.cpp), greedy.

What is asserted is what the design guarantees, not the prose of a 135M model: which action
is taken, that the Calculator's result is quoted exactly, that an answer without a tool is
exactly the plain call's, that a Japanese question costs no model call, and the event and
memory rules every run keeps.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing

import pytest

from tokenrelay.agent.loop import Agent
from tokenrelay.agent.prompts import DEFAULT_SYSTEM, FORCED_STOP_MESSAGE
from tokenrelay.backends.base import GenerationSettings
from tokenrelay.backends.llamacpp import LlamaCppBackend
from tokenrelay.events import (
    AnswerDelta,
    Event,
    ReasoningDelta,
    RunFinished,
    RunStarted,
    ToolCallFinished,
    ToolCallStarted,
)
from tokenrelay.memory import InMemorySessionStore
from tokenrelay.messages import Message
from tokenrelay.models import english_only_reply
from tokenrelay.run import stream_chat

pytestmark = pytest.mark.model

GREEDY = GenerationSettings(max_tokens=24, temperature=0, seed=0)


@pytest.fixture(scope="module")
async def backend() -> AsyncIterator[LlamaCppBackend]:
    b = LlamaCppBackend()
    await b.load()
    yield b
    await b.aclose()


async def run(agent: Agent, text: str, **kwargs: object) -> list[Event]:
    async with aclosing(agent.run(text, **kwargs)) as stream:  # type: ignore[arg-type]
        events = [e async for e in stream]
    assert isinstance(events[0], RunStarted)
    finished = events[-1]
    assert isinstance(finished, RunFinished), finished
    assert finished.answer == "".join(e.text for e in events if isinstance(e, AnswerDelta))
    return events


def tools_called(events: list[Event]) -> list[tuple[str, object]]:
    return [(e.name, e.arguments) for e in events if isinstance(e, ToolCallStarted)]


@pytest.mark.anyio
async def test_explicit_arithmetic_calls_the_calculator_and_quotes_it(backend: LlamaCppBackend) -> None:
    agent = Agent(backend, generation=GREEDY)
    before = backend.tokens_generated
    events = await run(agent, "What is 1234 * 5678?")
    assert tools_called(events) == [("Calculator", "1234 * 5678")]
    done = next(e for e in events if isinstance(e, ToolCallFinished))
    assert (done.result, done.error) == ("7006652", None)
    assert events[-1].answer == "1234 * 5678 = 7006652"  # type: ignore[union-attr]
    assert backend.tokens_generated == before  # the pre-check decided: no model call at all


@pytest.mark.anyio
async def test_words_are_read_as_arithmetic(backend: LlamaCppBackend) -> None:
    events = await run(Agent(backend, generation=GREEDY), "what is the square root of 71?")
    assert tools_called(events) == [("Calculator", "sqrt(71)")]
    assert events[-1].answer == "sqrt(71) = 8.42614977317636"  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_chit_chat_is_answered_by_exactly_the_plain_call(backend: LlamaCppBackend) -> None:
    question = "Tell me about Paris."
    events = await run(Agent(backend, generation=GREEDY), question)
    assert tools_called(events) == []
    async with aclosing(
        stream_chat(backend, [Message.system(DEFAULT_SYSTEM), Message.user(question)], settings=GREEDY)
    ) as plain:
        plain_answer = [e async for e in plain][-1]
    assert isinstance(plain_answer, RunFinished)
    assert events[-1].answer == plain_answer.answer  # type: ignore[union-attr]
    assert "Paris" in plain_answer.answer


@pytest.mark.anyio
async def test_the_model_decides_when_the_question_is_not_spelled_out(backend: LlamaCppBackend) -> None:
    agent = Agent(backend, generation=GREEDY)
    events = await run(agent, "If I have 3 apples and buy 5 more, how many apples do I have?", mode="full")
    assert tools_called(events) == [("Calculator", "3 + 5")]
    reasons = "".join(e.text for e in events if isinstance(e, ReasoningDelta))
    assert "Action: Calculator [model (margin +" in reasons
    assert events[-1].answer == "3 + 5 = 8"  # type: ignore[union-attr]
    events = await run(agent, "I have 2 cats and 3 dogs. What names would you suggest?", mode="full")
    assert tools_called(events) == []
    assert "Action: chat [model (margin -" in "".join(e.text for e in events if isinstance(e, ReasoningDelta))


@pytest.mark.anyio
@pytest.mark.parametrize("question", ["1234 × 5678 は？", "このドキュメントを要約してください。"])
async def test_japanese_gets_the_english_only_notice_without_a_model_call(
    backend: LlamaCppBackend, question: str
) -> None:
    store = InMemorySessionStore()
    session = (await store.create_session()).id
    before = backend.tokens_generated
    events = await run(Agent(backend, store=store, generation=GREEDY), question, session_id=session)
    assert backend.tokens_generated == before
    assert tools_called(events) == []
    assert events[-1].answer == english_only_reply()  # type: ignore[union-attr]
    [turn] = await store.history(session, limit=5)
    assert (turn.user_text, turn.answer, turn.status) == (question, english_only_reply(), "complete")


@pytest.mark.anyio
async def test_a_japanese_document_gets_the_notice_too(backend: LlamaCppBackend) -> None:
    store = InMemorySessionStore()
    session = (await store.create_session()).id
    await store.set_document(
        session, name="tutorial.md", text="このチュートリアルでは、エージェントを作ります。" * 20
    )
    events = await run(
        Agent(backend, store=store, generation=GREEDY), "Summarize this document.", session_id=session
    )
    assert events[-1].answer == english_only_reply()  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_final_mode_has_no_reasoning_and_full_mode_says_why(backend: LlamaCppBackend) -> None:
    agent = Agent(backend, generation=GREEDY)
    final = await run(agent, "What is 19 plus 23?")
    assert not any(isinstance(e, ReasoningDelta) for e in final)
    full = await run(agent, "What is 19 plus 23?", mode="full")
    reasons = "".join(e.text for e in full if isinstance(e, ReasoningDelta))
    assert reasons == "Action: Calculator [explicit arithmetic]\nAction input: 19 + 23\n"


@pytest.mark.anyio
async def test_force_with_one_iteration_stops_after_the_tool(backend: LlamaCppBackend) -> None:
    agent = Agent(backend, generation=GREEDY, max_iterations=1, early_stopping_method="force")
    events = await run(agent, "What is 6 * 7?")
    assert tools_called(events) == [("Calculator", "6 * 7")]
    assert events[-1].answer == FORCED_STOP_MESSAGE  # type: ignore[union-attr]


@pytest.mark.anyio
async def test_the_json_protocol_path_is_still_there_when_asked_for(backend: LlamaCppBackend) -> None:
    agent = Agent(backend, generation=GREEDY, plain_final_answer=False)
    assert agent._embedded is None
    await run(agent, "Hello!")
