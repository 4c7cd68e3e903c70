"""The application service shared by the CLI and the server: an agent, its backend and the store.

`Runner` owns the long-lived parts (the agent, the model backend if any, the session store)
and starts runs through one door, `stream(RunRequest)`: the same rules whoever calls.

* The agent is tokenrelay's `Agent` over `backend` (default), `PlainChat` (`plain=True`: one
  model call, no tools, no memory), or any `AgentLike` given as `agent=` (a LangChain graph,
  callback-style code); then `backend` may be None.
* Session rule: a run with a `session_id` continues that session of `owner`, created when it
  does not exist yet; the server resolves the session itself first (404 for another owner's,
  quotas for a new one) and says so with `session_ready=True`. What a run reads from and
  writes to its session is `agent/session.py`'s (`SessionTurn`), whatever the agent. A plain
  run keeps no session.
* A request setting what the agent does not honour (per-run sampling settings, a system
  prompt on an agent without `accepts` for them) raises `UnsupportedRequest` at the call,
  before any event.

It holds no per-run state, so one runner serves any number of concurrent runs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from tokenrelay.agent.loop import Agent
from tokenrelay.agent.plain import PlainChat
from tokenrelay.agent.protocol import (
    AgentBase,
    AgentLike,
    RunRequest,
    StreamMode,
    UnsupportedRequest,
    as_agent,
    unsupported_fields,
)
from tokenrelay.backends import Backend, GenerationSettings, load_backend
from tokenrelay.config import Settings
from tokenrelay.errors import ConfigError
from tokenrelay.events import Event
from tokenrelay.memory import InMemorySessionStore, SessionStore, open_store

__all__ = ["Runner", "UnsupportedRequest", "open_runner"]


#: how `UnsupportedRequest` names a request field
_WHAT = {
    "generation": "generation settings",
    "system": "a system prompt",
    "new_session": "creating its session",
}


class Runner:
    def __init__(
        self,
        settings: Settings,
        backend: Backend | None,
        store: SessionStore,
        *,
        plain: bool = False,
        tools: Any = None,
        agent: AgentLike | None = None,
    ) -> None:
        self.settings = settings
        self._backend = backend
        self.store = store
        self.generation = GenerationSettings(max_tokens=settings.max_tokens, temperature=settings.temperature)
        self.agent: AgentBase
        if agent is not None:
            self.agent = as_agent(agent)
            self.agent.bind_store(store)
        elif backend is None:
            raise ConfigError("a Runner needs a backend or an agent")
        elif plain:
            self.agent = PlainChat(backend, system_prompt=settings.system_prompt, generation=self.generation)
        else:
            self.agent = Agent(
                backend,
                tools=tools,
                store=store,
                memory_k=settings.memory_k,
                max_iterations=settings.max_iterations,
                early_stopping_method=settings.early_stopping_method,
                tool_protocol=settings.tool_protocol,
                tool_timeout_s=settings.tool_timeout_s,
                system_prompt=settings.system_prompt,
                generation=self.generation,
                answer_policy=settings.answer_policy,
            )

    @property
    def backend(self) -> Backend:
        """The model backend; `UnsupportedRequest` when the runner serves an agent without one
        (a LangChain graph), so model-only features (fitting a document) say so clearly."""
        if self._backend is None:
            raise UnsupportedRequest(f"this agent ({self.agent.name}) has no model backend of tokenrelay's")
        return self._backend

    @property
    def has_backend(self) -> bool:
        return self._backend is not None

    @property
    def plain(self) -> bool:
        """Whether runs are plain model calls (no tools, no session memory)."""
        return isinstance(self.agent, PlainChat)

    @property
    def model_name(self) -> str:
        """The name the runs report (the agent's: its backend's model, or the graph's name)."""
        return self.agent.name

    async def warm(self) -> None:
        """Do now what the first run would pay for (when the agent has such work)."""
        await self.agent.warm()

    async def ensure_session(self, session_id: str | None, *, owner: str | None = None) -> str:
        """An existing session of `owner`, or a new one (with `session_id` if given)."""
        if session_id is not None and await self.store.get_session(session_id, owner=owner) is not None:
            return session_id
        info = await self.store.create_session(owner=owner, session_id=session_id)
        return info.id

    def stream(
        self, request: RunRequest, *, owner: str | None = None, session_ready: bool = False
    ) -> AsyncIterator[Event]:
        """The run's events (see the module docstring for the rules). Raises `UnsupportedRequest`
        now, before any event, for a field the agent does not honour. The session is `owner`'s;
        `session_ready=True`: the caller has resolved it already (the server: 404 for another
        owner's, quotas for a new one), so it is used as is."""
        unsupported = unsupported_fields(self.agent, request)
        if unsupported:
            what = " and ".join(_WHAT[f] for f in unsupported)
            raise UnsupportedRequest(f"this agent ({self.agent.name}) does not take {what} per request")
        if request.session_id is None or self.plain or session_ready:
            return self.agent.stream(request)
        return self._in_session(request, owner)

    async def _in_session(self, request: RunRequest, owner: str | None) -> AsyncIterator[Event]:
        await self.ensure_session(request.session_id, owner=owner)
        async for event in self.agent.stream(request):
            yield event

    def run(
        self,
        text: str,
        *,
        session_id: str | None = None,
        full: bool = False,
        mode: StreamMode | None = None,
        run_id: str | None = None,
        session_ready: bool = False,
    ) -> AsyncIterator[Event]:
        """`stream` for the CLI: `full=True` is `mode="full"`; `session_ready=True` when
        `session_id` came from `ensure_session` (no second lookup, no wrapping generator)."""
        mode = mode or ("full" if full else "final")
        request = RunRequest(text, session_id=session_id, mode=mode, run_id=run_id)
        return self.stream(request, session_ready=session_ready)

    async def aclose(self) -> None:
        if self._backend is not None:
            await self._backend.aclose()
        await self.store.close()


@asynccontextmanager
async def open_runner(
    settings: Settings,
    *,
    plain: bool = False,
    persistent: bool = True,
    backend: Backend | None = None,
    agent: AgentLike | None = None,
) -> AsyncIterator[Runner]:
    """A runner for `settings`; `persistent=False` keeps memory in process only. With `agent`,
    no backend is loaded unless given."""
    if backend is None and agent is None:
        backend = load_backend(settings.model, settings)
    store: SessionStore = open_store(settings.db) if persistent else InMemorySessionStore()
    runner = Runner(settings, backend, store, plain=plain, agent=agent)
    try:
        yield runner
    finally:
        await runner.aclose()
