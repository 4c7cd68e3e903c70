"""tokenrelay <-> LangChain / LangGraph (`pip install "tokenrelay[langchain]"`).

Three ways in, all streaming through tokenrelay's sinks (terminal, raw /chat, typed SSE
/chat/events, OpenAI-compatible /v1/chat/completions, the web page):

* `LangChainBackend(chat_model)` - any LangChain chat model as a tokenrelay backend, tool calls
  mapped both ways, so tokenrelay's agent runs on every provider LangChain integrates;
* `RunnableAgent(graph)` - an existing LangGraph graph (or any Runnable) served as is, with
  final-answer-only output: answer text is the text of the model message that ends the run
  without tool calls, never the tokens of every node; tool calls and results become tool events;
* `TokenrelayCallbackHandler` / `stream_with_callbacks` / `CallbackAgent` - code written the
  classic way (`callbacks=[handler]`, `on_llm_new_token`) streams per request, one handler per
  run, so concurrent requests never mix tokens; `final_only=True` streams only the final answer
  of JSON-action agents.

`create_langchain_app(target)` builds the server for any of them. The details, and the exact
rules for what counts as answer text, are in the docstrings of this package's modules
(`routing.py`: the answer policies; `handler.py`: the callback handler; `agent.py`; `server.py`).
tokenrelay's core never imports this package.
"""

from __future__ import annotations

import tokenrelay.integrations.langchain.common  # noqa: F401  (first: says which extra to install)

# isort: split

from tokenrelay.agent.protocol import AgentLike
from tokenrelay.integrations.langchain.agent import RunnableAgent
from tokenrelay.integrations.langchain.backend import (
    LangChainBackend,
    backend_from_model_id,
    model_name,
    to_langchain_messages,
)
from tokenrelay.integrations.langchain.events import CallbackAgent, stream_with_callbacks
from tokenrelay.integrations.langchain.handler import TokenrelayCallbackHandler
from tokenrelay.integrations.langchain.results import answer_of
from tokenrelay.integrations.langchain.routing import AnswerPolicy
from tokenrelay.integrations.langchain.server import create_langchain_app

__all__ = [
    "AgentLike",
    "AnswerPolicy",
    "CallbackAgent",
    "LangChainBackend",
    "RunnableAgent",
    "TokenrelayCallbackHandler",
    "answer_of",
    "backend_from_model_id",
    "create_langchain_app",
    "model_name",
    "stream_with_callbacks",
    "to_langchain_messages",
]
