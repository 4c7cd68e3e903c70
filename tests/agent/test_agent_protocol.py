"""The agent seam (agent/protocol.py, agent/session.py, api.Runner): `RunRequest`, the one
`run(text, **options)` convenience, the session rules every caller gets through
`Runner.stream`, and `UnsupportedRequest` for what an agent cannot do."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import pytest

from tokenrelay.agent.loop import Agent
from tokenrelay.agent.plain import PlainChat
from tokenrelay.agent.protocol import (
    AgentAdapter,
    AgentBase,
    AgentLike,
    RunRequest,
    UnsupportedRequest,
    as_agent,
)
from tokenrelay.api import Runner
from tokenrelay.backends.base import GenerationSettings
from tokenrelay.config import Settings
from tokenrelay.events import AnswerDelta, Event, RunFinished, RunStarted
from tokenrelay.memory import InMemorySessionStore
from tokenrelay.testing import ScriptedBackend, check_events, final_answer


async def collect(events: AsyncIterator[Event]) -> list[Event]:
    async with aclosing(events) as stream:  # type: ignore[type-var]
        out = [e async for e in stream]
    check_events(out)
    return out


class EchoAgent(AgentBase):
    """A minimal agent: answers with the request it got (for what reached it)."""

    def __init__(self) -> None:
        self.requests: list[RunRequest] = []

    @property
    def name(self) -> str:
        return "echo"

    async def stream(self, request: RunRequest) -> AsyncIterator[Event]:
        self.requests.append(request)
        yield RunStarted(run_id=request.run_id or "r", session_id=request.session_id, model=self.name)
        yield AnswerDelta(text=request.text)
        yield RunFinished(answer=request.text)


class ProtocolOnly:
    """An agent by shape only (no base class): `name`, `accepts`, `stream`."""

    name = "shape"
    accepts: frozenset[str] = frozenset()

    async def stream(self, request: RunRequest) -> AsyncIterator[Event]:
        yield RunStarted(run_id="r", session_id=None, model=self.name)
        yield AnswerDelta(text="ok")
        yield RunFinished(answer="ok")


def runner(agent: Any = None, **kw: Any) -> Runner:
    backend = None if agent is not None else ScriptedBackend(["Hello there."])
    return Runner(Settings(db="sqlite:///:memory:"), backend, InMemorySessionStore(), agent=agent, **kw)


# -- RunRequest ----------------------------------------------------------------------------------


def test_run_request_is_frozen_and_normalizes_history() -> None:
    request = RunRequest("hi", history=[("q", "a")])  # type: ignore[arg-type]
    assert request.history == (("q", "a"),)
    assert request.mode == "final" and request.session_id is None and request.generation is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.text = "other"  # type: ignore[misc]


@pytest.mark.parametrize("field,value", [("mode", "loud"), ("answer_policy", "sometimes")])
def test_run_request_rejects_unknown_values(field: str, value: str) -> None:
    with pytest.raises(ValueError, match=field):
        RunRequest("hi", **{field: value})


@pytest.mark.anyio
async def test_run_is_stream_of_a_request() -> None:
    agent = EchoAgent()
    events = await collect(agent.run("hello", session_id="s", mode="full", history=[("q", "a")]))
    assert final_answer(events) == "hello"
    assert agent.requests == [RunRequest("hello", session_id="s", mode="full", history=(("q", "a"),))]


def test_agents_have_the_protocol() -> None:
    backend = ScriptedBackend(["x"])
    for agent in (Agent(backend), PlainChat(backend), EchoAgent(), ProtocolOnly()):
        assert isinstance(agent, AgentLike)
    assert Agent(backend).name == "scripted"
    assert Agent(backend).accepts == {"generation", "system", "new_session"}
    assert isinstance(as_agent(ProtocolOnly()), AgentAdapter)
    echo = EchoAgent()
    assert as_agent(echo) is echo


# -- Runner.stream: session rules -------------------------------------------------------------


@pytest.mark.anyio
async def test_runner_creates_a_missing_session_and_remembers() -> None:
    r = runner()
    first = await collect(r.stream(RunRequest("one", session_id="s1")))
    assert isinstance(first[0], RunStarted) and first[0].session_id == "s1"
    assert await r.store.get_session("s1") is not None
    await collect(r.stream(RunRequest("two", session_id="s1")))
    turns = await r.store.history("s1")
    assert [t.user_text for t in turns] == ["one", "two"]
    assert all(t.status == "complete" and t.answer == "Hello there." for t in turns)
    # the second model call saw the first turn: memory through the one session door
    backend = r.backend
    assert isinstance(backend, ScriptedBackend)
    assert any("one" in m.content for m in backend.calls[-1].messages)


@pytest.mark.anyio
async def test_runner_without_session_stores_nothing() -> None:
    r = runner()
    events = await collect(r.stream(RunRequest("hi")))
    assert final_answer(events) == "Hello there."
    assert await r.store.list_sessions() == []


@pytest.mark.anyio
async def test_plain_runner_keeps_no_session_but_takes_history() -> None:
    r = runner(plain=True)
    assert r.plain and r.model_name == "scripted"
    events = await collect(r.stream(RunRequest("hi", session_id="s", history=(("q", "a"),))))
    assert final_answer(events) == "Hello there."
    assert await r.store.get_session("s") is None
    backend = r.backend
    assert isinstance(backend, ScriptedBackend)
    assert [m.content for m in backend.calls[-1].messages][-3:] == ["q", "a", "hi"]


@pytest.mark.anyio
async def test_cli_run_is_stream() -> None:
    r = runner()
    events = await collect(r.run("hi", session_id="cli", full=True))
    assert final_answer(events) == "Hello there."
    assert [t.user_text for t in await r.store.history("cli")] == ["hi"]


# -- what an agent cannot do ------------------------------------------------------------------


@pytest.mark.anyio
async def test_unsupported_request_is_refused_before_any_event() -> None:
    agent = EchoAgent()
    r = runner(agent)
    assert r.model_name == "echo" and not r.has_backend
    with pytest.raises(UnsupportedRequest, match="generation settings"):
        r.stream(RunRequest("hi", generation=GenerationSettings(temperature=0.5)))
    with pytest.raises(UnsupportedRequest, match="system prompt"):
        r.stream(RunRequest("hi", system="be brief"))
    assert agent.requests == []
    with pytest.raises(UnsupportedRequest, match="no model backend"):
        r.backend  # noqa: B018
    assert UnsupportedRequest("x").code == "unsupported"
    events = await collect(r.stream(RunRequest("fine", session_id="s")))
    assert final_answer(events) == "fine"
    assert await r.store.get_session("s") is not None


@pytest.mark.anyio
async def test_agent_takes_per_run_generation_and_system() -> None:
    r = runner()
    request = RunRequest("hi", generation=GenerationSettings(temperature=0.25), system="Be brief.")
    await collect(r.stream(request))
    backend = r.backend
    assert isinstance(backend, ScriptedBackend)
    call = backend.calls[-1]
    assert call.settings.temperature == 0.25
    assert "Be brief." in call.messages[0].content


@pytest.mark.anyio
async def test_protocol_only_agent_through_runner() -> None:
    r = runner(ProtocolOnly())
    await r.warm()
    assert final_answer(await collect(r.stream(RunRequest("x")))) == "ok"


def test_runner_needs_a_backend_or_an_agent() -> None:
    from tokenrelay.errors import ConfigError

    with pytest.raises(ConfigError):
        Runner(Settings(db="sqlite:///:memory:"), None, InMemorySessionStore())


@pytest.mark.anyio
async def test_runner_sessions_are_the_owners() -> None:
    r = runner()
    await collect(r.stream(RunRequest("mine", session_id="s"), owner="alice"))
    info = await r.store.get_session("s", owner="alice")
    assert info is not None and info.owner == "alice"
    # a session resolved by the caller (the server's 404 and quota rules) is used as is
    ready = (await r.store.create_session(owner="bob")).id
    await collect(r.stream(RunRequest("ok", session_id=ready), owner="bob", session_ready=True))
    assert [t.user_text for t in await r.store.history(ready)] == ["ok"]
