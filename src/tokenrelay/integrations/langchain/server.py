"""Put a LangChain model, graph or callback-style agent behind tokenrelay's HTTP server.

`create_langchain_app(target)` returns tokenrelay's FastAPI app (raw /chat, typed SSE
/chat/events, OpenAI-compatible /v1/chat/completions, sessions, the page) running `target`:

* a `BaseChatModel` becomes the server's backend (`LangChainBackend`): tokenrelay's own agent
  (memory, tools, iteration limit) runs on it;
* a compiled LangGraph graph or any other Runnable is wrapped in a `RunnableAgent`;
* a tokenrelay agent (`AgentLike`: `name` and `stream(RunRequest)`, such as `RunnableAgent` and
  `CallbackAgent`) is served as is.

For the last two the server still needs a `Backend` (it names the model in /health and
/v1/models): `AgentNameBackend` stands in and is never called. `attach(app, agent)` installs
the agent into an app from `create_app` when the app starts (the runner is built in the
lifespan), and offers it the server's session store (`bind_store`).
"""

from __future__ import annotations

import tokenrelay.integrations.langchain.common  # noqa: F401  (first: says which extra to install)

# isort: split

from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.runnables import Runnable

from tokenrelay.agent.protocol import AgentLike, as_agent
from tokenrelay.backends.base import Backend, GenerationSettings, ModelChunk
from tokenrelay.errors import BackendError
from tokenrelay.integrations.langchain.agent import RunnableAgent
from tokenrelay.integrations.langchain.backend import LangChainBackend
from tokenrelay.messages import Message, ToolSpec

if TYPE_CHECKING:
    from fastapi import FastAPI

    from tokenrelay.api import Runner
    from tokenrelay.config import Settings
    from tokenrelay.memory.base import SessionStore

__all__ = ["AgentLike", "AgentNameBackend", "attach", "create_langchain_app"]


class AgentNameBackend(Backend):
    """The backend of a server that runs a LangChain agent: it only names the agent."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def stream(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[ToolSpec] | None = None,
        settings: GenerationSettings = GenerationSettings(),
    ) -> AsyncGenerator[ModelChunk, None]:
        raise BackendError(f"{self.name} is a LangChain agent served by tokenrelay; it has no model to call")
        yield  # pragma: no cover - makes this an async generator


def attach(app: FastAPI, agent: AgentLike | Callable[[Runner], AgentLike]) -> FastAPI:
    """Make `app` (from `tokenrelay.server.app.create_app`) run `agent` for every chat request.
    `agent` may be a factory taking the app's `Runner`. Returns `app`."""
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app_: Any) -> AsyncIterator[Any]:
        async with inner(app_) as state:
            runner = app_.state.runner
            chosen = as_agent(agent if isinstance(agent, AgentLike) else agent(runner))
            chosen.bind_store(runner.store)
            runner.agent = chosen
            yield state

    app.router.lifespan_context = lifespan
    return app


def create_langchain_app(
    target: BaseChatModel | Runnable[Any, Any] | AgentLike,
    settings: Settings | None = None,
    *,
    store: SessionStore | None = None,
    name: str | None = None,
    **options: Any,
) -> FastAPI:
    """tokenrelay's server running `target` (see the module docstring). `options` go to
    `LangChainBackend` for a chat model, to `RunnableAgent` for other Runnables."""
    from tokenrelay.server.app import create_app

    if isinstance(target, BaseChatModel):
        return create_app(settings, backend=LangChainBackend(target, name=name, **options), store=store)
    if isinstance(target, AgentLike) and not isinstance(target, Runnable):
        if options:
            raise TypeError(f"options {sorted(options)} apply to Runnables, not to a ready agent")
        agent: AgentLike = target
        label = name or str(getattr(target, "name", "") or type(target).__name__)
    else:
        agent = RunnableAgent(target, name=name, **options)
        label = agent.name
    return attach(create_app(settings, backend=AgentNameBackend(label), store=store), agent)
