"""The agent's memory window (`memory_k`): the last k turns that have an answer, whatever
failed, was empty or is still running in between; a partial answer of an interrupted turn
counts and is marked as such (`INTERRUPTED_MARK`) in what the model sees."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from tokenrelay.agent.loop import Agent
from tokenrelay.events import Event, RunError, RunFinished
from tokenrelay.memory import InMemorySessionStore, SQLiteSessionStore
from tokenrelay.memory.base import INTERRUPTED_MARK
from tokenrelay.messages import Message
from tokenrelay.testing import ScriptedBackend

Store = SQLiteSessionStore | InMemorySessionStore


@pytest.fixture(params=["memory", "sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    s: Store = SQLiteSessionStore(tmp_path / "m.db") if request.param == "sqlite" else InMemorySessionStore()
    yield s
    await s.close()


def _final(text: str) -> str:
    return json.dumps({"action": "Final Answer", "action_input": text})


def _reply(messages: Sequence[Message]) -> str:
    last = [m.content for m in messages if m.role == "user"][-1]
    return _final("A:" + last)


async def _run(agent: Agent, text: str, session_id: str = "s1") -> list[Event]:
    return [e async for e in agent.run(text, session_id=session_id)]


def _remembered(messages: Sequence[Message]) -> list[tuple[str, str]]:
    """The (role, content) pairs between the system prompt and the new question."""
    return [(m.role, m.content) for m in messages[1:-1]]


@pytest.mark.anyio
async def test_five_failed_turns_do_not_empty_the_memory(store: Store) -> None:
    await store.create_session(session_id="s1")
    good = ScriptedBackend(_reply)
    agent = Agent(good, store=store, memory_k=5)
    for q in ("q1", "q2", "q3"):
        await _run(agent, q)
    failing = Agent(ScriptedBackend(["x"], fail_after=0), store=store, memory_k=5)
    for i in range(5):
        events = await _run(failing, f"broken{i}")
        assert isinstance(events[-1], RunError)
    await _run(agent, "q4")
    assert _remembered(good.calls[-1].messages) == [
        ("user", "q1"), ("assistant", "A:q1"),
        ("user", "q2"), ("assistant", "A:q2"),
        ("user", "q3"), ("assistant", "A:q3"),
    ]  # fmt: skip


@pytest.mark.anyio
async def test_a_partial_answer_is_remembered_and_marked_interrupted(store: Store) -> None:
    await store.create_session(session_id="s1")
    slow = ScriptedBackend([_final("The first half and the second half")], tokens_per_second=50, token_size=4)
    agent = Agent(slow, store=store, memory_k=5)
    stream = agent.run("tell me", session_id="s1")
    got = ""
    async for event in stream:
        text = getattr(event, "text", "")
        got += text
        if len(got) >= 8:
            break
    await stream.aclose()
    (turn,) = await store.history("s1")
    assert turn.status == "interrupted" and turn.answer == got
    good = ScriptedBackend(_reply)
    await _run(Agent(good, store=store, memory_k=5), "and then?")
    assert _remembered(good.calls[-1].messages) == [
        ("user", "tell me"),
        ("assistant", got + INTERRUPTED_MARK),
    ]


@pytest.mark.anyio
async def test_concurrent_requests_in_one_session_keep_the_history(store: Store) -> None:
    await store.create_session(session_id="s1")
    agent = Agent(ScriptedBackend(_reply), store=store, memory_k=5)
    for i in range(5):
        await _run(agent, f"q{i}")
    paced = ScriptedBackend(_reply, tokens_per_second=200)
    concurrent = Agent(paced, store=store, memory_k=5)
    results = await asyncio.gather(*(_run(concurrent, f"c{i}") for i in range(6)))
    assert all(isinstance(r[-1], RunFinished) for r in results)
    expected = [pair for i in range(5) for pair in (("user", f"q{i}"), ("assistant", f"A:q{i}"))]
    assert len(paced.calls) == 6
    for call in paced.calls:
        assert _remembered(call.messages) == expected
