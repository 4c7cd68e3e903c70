"""Serve an existing LangChain Runnable or LangGraph graph through tokenrelay.

`RunnableAgent(graph)` is a tokenrelay agent (`stream(RunRequest)`, `run(text, ...)`), so the
server's sinks (raw /chat, typed SSE /chat/events,
OpenAI-compatible /v1/chat/completions, the page) and the CLI helpers stream it unchanged.
Each run gets its own `TokenrelayCallbackHandler` (policy `stream` by default; `messages` is the
exact-but-held alternative, `answer_policy="hold"` per run: only the text
of model messages that end without tool calls is answer text; see `routing.py`), attached
through the run's config, and the graph runs with `ainvoke` as a task; the handler makes its
chat models stream.

Input and memory:

* the input is `{"messages": [...history, HumanMessage(text)]}` (a list of messages for a bare
  chat model); `input_fn(text, history_messages)` builds anything else;
* a graph compiled with a checkpointer keeps its own memory: the run's `thread_id` is the
  session id (a run without a session gets a throwaway thread, deleted after the run);
* otherwise, with a session `store`, the last `memory_k` (default 5) complete turns of the
  session are given as history. With a store, every run is recorded as a turn (complete,
  failed, or interrupted with its partial answer) through `agent/session.py`, the rules
  tokenrelay's own agent follows, so the server's session endpoints and the page show the
  conversation.
"""

from __future__ import annotations

import tokenrelay.integrations.langchain.common  # noqa: F401  (first: says which extra to install)

# isort: split

import logging
from collections.abc import AsyncIterator, Callable, Collection
from typing import Any

from langchain_core.callbacks import BaseCallbackManager
from langchain_core.language_models import BaseLanguageModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langchain_core.runnables import Runnable, RunnableConfig

from tokenrelay.agent.protocol import AgentBase, RunRequest
from tokenrelay.agent.session import SessionTurn
from tokenrelay.events import AnswerDelta, Event, Narration, RunError, RunFinished, RunStarted, final_answer
from tokenrelay.integrations.langchain.events import follow_task
from tokenrelay.integrations.langchain.handler import TokenrelayCallbackHandler
from tokenrelay.integrations.langchain.routing import POLICIES, AnswerPolicy
from tokenrelay.memory.base import SessionStore, TurnStatus
from tokenrelay.run import new_run_id

__all__ = ["RunnableAgent"]

log = logging.getLogger("tokenrelay.langchain")

InputFn = Callable[[str, list[BaseMessage]], Any]


def _checkpointer(runnable: Any) -> Any:
    saver = getattr(runnable, "checkpointer", None)
    return saver if hasattr(saver, "aget_tuple") else None


class RunnableAgent(AgentBase):
    """A LangChain Runnable (a compiled LangGraph graph, an agent, a chain) as a tokenrelay
    agent. Holds configuration only: one instance serves any number of concurrent runs."""

    accepts = frozenset({"new_session"})

    def __init__(
        self,
        runnable: Runnable[Any, Any],
        *,
        name: str | None = None,
        policy: AnswerPolicy = "stream",
        answer_nodes: Collection[str] | None = None,
        store: SessionStore | None = None,
        memory_k: int | None = None,
        input_fn: InputFn | None = None,
        config: RunnableConfig | None = None,
        recursion_limit: int | None = None,
    ) -> None:
        if memory_k is not None and memory_k < 0:
            raise ValueError("memory_k must be 0 or more")
        if policy not in POLICIES:
            raise ValueError(f"unknown answer policy {policy!r}")
        self.runnable = runnable
        self._name = str(name or getattr(runnable, "name", None) or runnable.get_name())
        self.policy: AnswerPolicy = policy
        self.answer_nodes = frozenset(answer_nodes) if answer_nodes is not None else None
        self.store = store
        self.checkpointer = _checkpointer(runnable)
        self.memory_k = memory_k if memory_k is not None else (0 if self.checkpointer is not None else 5)
        self.input_fn = input_fn
        self.config = config
        self.recursion_limit = recursion_limit

    @property
    def name(self) -> str:
        return self._name

    def bind_store(self, store: SessionStore) -> None:
        """Record turns in the serving runner's store unless given one of its own."""
        if self.store is None:
            self.store = store

    def make_input(self, text: str, history: list[BaseMessage]) -> Any:
        if self.input_fn is not None:
            return self.input_fn(text, history)
        messages = [*history, HumanMessage(content=text)]
        if isinstance(self.runnable, BaseLanguageModel):
            return messages
        return {"messages": messages}

    def make_config(
        self, handler: TokenrelayCallbackHandler, session_id: str | None, run_id: str
    ) -> tuple[RunnableConfig, str | None]:
        """The run's config (the handler added to the configured callbacks) and the throwaway
        thread id to delete afterwards, if any."""
        base: dict[str, Any] = dict(self.config or {})
        callbacks = base.get("callbacks")
        if callbacks is None:
            base["callbacks"] = [handler]
        elif isinstance(callbacks, BaseCallbackManager):
            manager = callbacks.copy()
            manager.add_handler(handler, inherit=True)
            base["callbacks"] = manager
        else:
            base["callbacks"] = [*callbacks, handler]
        base["metadata"] = {**(base.get("metadata") or {}), "tokenrelay_run_id": run_id}
        if self.recursion_limit is not None:
            base["recursion_limit"] = self.recursion_limit
        ephemeral: str | None = None
        if self.checkpointer is not None:
            configurable = dict(base.get("configurable") or {})
            if "thread_id" not in configurable:
                if session_id is not None:
                    configurable["thread_id"] = session_id
                else:
                    ephemeral = configurable["thread_id"] = f"tokenrelay-{run_id}"
            base["configurable"] = configurable
        config: RunnableConfig = base  # type: ignore[assignment]
        return config, ephemeral

    async def stream(self, request: RunRequest) -> AsyncIterator[Event]:
        """Run the Runnable on `request.text` and stream its events (one `RunStarted` first,
        exactly one `RunFinished` or `RunError` last). `answer_policy="hold"` runs this request
        with the `messages` policy (only final-answer text, held per tool-enabled call);
        `"stream"` with `stream`."""
        text, session_id, history = request.text, request.session_id, request.history
        run_id = request.run_id or new_run_id()
        policy = self.policy
        if request.answer_policy == "hold" and policy in ("stream", "eager"):
            policy = "messages"
        elif request.answer_policy == "stream" and policy in ("messages", "eager"):
            policy = "stream"
        handler = TokenrelayCallbackHandler(
            policy=policy,
            mode=request.mode,
            answer_nodes=self.answer_nodes,
            run_id=run_id,
            session_id=session_id,
            model=self._name,
            auto_finish=False,
            history=history,
        )
        yield RunStarted(run_id=run_id, session_id=session_id, model=self._name)
        turn = SessionTurn(
            self.store,
            session_id,
            run_id=run_id,
            memory_k=self.memory_k,
            create=request.new_session,
            owner=request.owner,
        )
        config, ephemeral = self.make_config(handler, session_id, run_id)

        async def work() -> Any:
            await turn.open(text, document=False)
            messages: list[BaseMessage] = []
            for user_text, answer in [*history, *turn.pairs]:
                messages += [HumanMessage(content=user_text), AIMessage(content=answer)]
            return await self.runnable.ainvoke(self.make_input(text, messages), config)

        status: TurnStatus = "interrupted"
        error: str | None = None
        delivered: list[Event] = []  # answer events as far as the consumer has them
        try:
            async for event in follow_task(handler, work()):
                if type(event) is AnswerDelta or type(event) is Narration:
                    delivered.append(event)
                elif isinstance(event, RunFinished | RunError):
                    if isinstance(event, RunFinished):
                        status = "complete"
                    else:
                        status, error = "failed", event.message
                    await turn.finish(status, event.answer, error=error)
                yield event
        finally:
            await turn.finish(status, final_answer(delivered), error=error)  # (no-op once finished)
            if ephemeral is not None:
                await self._forget(ephemeral)

    async def _forget(self, thread_id: str) -> None:
        delete = getattr(self.checkpointer, "adelete_thread", None)
        if delete is None:
            return
        try:
            await delete(thread_id)
        except Exception:  # NotImplementedError on savers without deletion, or a store error
            log.debug("could not delete checkpoint thread %s", thread_id, exc_info=True)
