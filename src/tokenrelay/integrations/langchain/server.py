"""Put a LangChain model, graph or callback-style agent behind tokenrelay's HTTP server.

`create_langchain_app(target)` returns tokenrelay's FastAPI app (raw /chat, typed SSE
/chat/events, OpenAI-compatible /v1/chat/completions, sessions, the page) running `target`:

* a `BaseChatModel` becomes the server's backend (`LangChainBackend`): tokenrelay's own agent
  (memory, tools, iteration limit) runs on it;
* a compiled LangGraph graph or any other Runnable is wrapped in a `RunnableAgent`;
* a tokenrelay agent (`AgentLike`: `name` and `stream(RunRequest)`, such as `RunnableAgent` and
  `CallbackAgent`) is served as is.

The last two enter through `create_app(agent=...)`: the server's `Runner` serves the agent
(it names the model in /health and /v1/models, and offers the agent the server's session
store), with no model backend; what needs one (fitting an attached document to the context
window) answers 400.
"""

from __future__ import annotations

import tokenrelay.integrations.langchain.common  # noqa: F401  (first: says which extra to install)

# isort: split

from typing import TYPE_CHECKING, Any

from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.runnables import Runnable

from tokenrelay.agent.protocol import AgentAdapter, AgentLike
from tokenrelay.integrations.langchain.agent import RunnableAgent
from tokenrelay.integrations.langchain.backend import LangChainBackend

if TYPE_CHECKING:
    from fastapi import FastAPI

    from tokenrelay.config import Settings
    from tokenrelay.memory.base import SessionStore

__all__ = ["create_langchain_app"]


def create_langchain_app(
    target: BaseChatModel | Runnable[Any, Any] | AgentLike,
    settings: Settings | None = None,
    *,
    store: SessionStore | None = None,
    name: str | None = None,
    **options: Any,
) -> FastAPI:
    """tokenrelay's server running `target` (see the module docstring). `options` go to
    `LangChainBackend` for a chat model, to `RunnableAgent` for other Runnables; `name` names
    the model the server reports (/health, /v1/models)."""
    from tokenrelay.server.app import create_app

    if isinstance(target, BaseChatModel):
        return create_app(settings, backend=LangChainBackend(target, name=name, **options), store=store)
    agent: AgentLike
    if isinstance(target, AgentLike) and not isinstance(target, Runnable):
        if options:
            raise TypeError(f"options {sorted(options)} apply to Runnables, not to a ready agent")
        agent = target if name is None else AgentAdapter(target, name=name)
    else:
        agent = RunnableAgent(target, name=name, **options)
    return create_app(settings, agent=agent, store=store)
