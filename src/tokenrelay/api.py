"""The application service shared by the CLI and the server: backend + store + agent.

`Runner` owns the long-lived parts (the model backend, the session store) and starts runs.
It holds no per-run state, so one runner serves any number of concurrent runs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from tokenrelay.agent.loop import Agent, StreamMode
from tokenrelay.backends import Backend, GenerationSettings, load_backend
from tokenrelay.config import Settings
from tokenrelay.events import Event
from tokenrelay.memory import InMemorySessionStore, SessionStore, open_store
from tokenrelay.messages import Message
from tokenrelay.run import stream_chat

__all__ = ["Runner", "open_runner"]


class Runner:
    def __init__(
        self,
        settings: Settings,
        backend: Backend,
        store: SessionStore,
        *,
        plain: bool = False,
        tools: Any = None,
    ) -> None:
        self.settings = settings
        self.backend = backend
        self.store = store
        self.plain = plain
        self.generation = GenerationSettings(max_tokens=settings.max_tokens, temperature=settings.temperature)
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

    async def ensure_session(self, session_id: str | None, *, owner: str | None = None) -> str:
        """An existing session of `owner`, or a new one (with `session_id` if given)."""
        if session_id is not None and await self.store.get_session(session_id, owner=owner) is not None:
            return session_id
        info = await self.store.create_session(owner=owner, session_id=session_id)
        return info.id

    def run(
        self,
        text: str,
        *,
        session_id: str | None = None,
        full: bool = False,
        mode: StreamMode | None = None,
        run_id: str | None = None,
    ) -> AsyncIterator[Event]:
        if self.plain:
            messages = [Message.system(self.settings.system_prompt)] if self.settings.system_prompt else []
            return stream_chat(
                self.backend, [*messages, Message.user(text)], settings=self.generation, run_id=run_id
            )
        return self._agent_run(text, session_id, mode or ("full" if full else "final"), run_id)

    async def _agent_run(
        self, text: str, session_id: str | None, mode: StreamMode, run_id: str | None
    ) -> AsyncIterator[Event]:
        if session_id is not None:
            session_id = await self.ensure_session(session_id)
        async for event in self.agent.run(text, session_id=session_id, mode=mode, run_id=run_id):
            yield event

    async def aclose(self) -> None:
        await self.backend.aclose()
        await self.store.close()


@asynccontextmanager
async def open_runner(
    settings: Settings, *, plain: bool = False, persistent: bool = True, backend: Backend | None = None
) -> AsyncIterator[Runner]:
    """A runner for `settings`; `persistent=False` keeps memory in process only."""
    backend = backend or load_backend(settings.model, settings)
    store: SessionStore = open_store(settings.db) if persistent else InMemorySessionStore()
    runner = Runner(settings, backend, store, plain=plain)
    try:
        yield runner
    finally:
        await runner.aclose()
