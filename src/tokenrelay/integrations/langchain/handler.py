"""LangChain callbacks -> one tokenrelay event stream per run.

`TokenrelayCallbackHandler` is a LangChain callback handler that one run owns: create one per
request, pass it as `callbacks=[handler]` (or `config={"callbacks": [handler]}`), and read
`handler.events()` - a well-formed tokenrelay stream (one `RunStarted` first, exactly one
`RunFinished` or `RunError` last). Because each request has its own handler, two concurrent
requests never see each other's tokens (the classic bug: one handler on a shared LLM object).
`stream_with_callbacks(factory)` runs tutorial-style code as a task and yields its events;
`CallbackAgent` serves such code through tokenrelay's server (raw /chat, typed SSE,
OpenAI-compatible, the page).

What becomes answer text (`AnswerDelta`) is set by the answer policy: see `routing.py`.

Handlers run inline (`run_inline = True`) and take a lock per callback, so they work both for
async code on the event loop and for sync code that LangChain or LangGraph runs in worker
threads. Attaching one also makes chat models stream when called with `invoke`/`ainvoke`
(it has the `tap_output_*` methods LangChain looks for), as LangGraph's own `messages` mode does.
"""

from __future__ import annotations

import tokenrelay.integrations.langchain.common  # noqa: F401  (first: says which extra to install)

# isort: split

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Collection, Iterator, Sequence
from typing import Any, TypeVar
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import BaseMessage
from langchain_core.outputs import ChatGenerationChunk, GenerationChunk, LLMResult

from tokenrelay.errors import TokenrelayError
from tokenrelay.events import (
    Event,
    RunError,
    RunFinished,
    RunStarted,
    Timings,
    ToolCallFinished,
    ToolCallStarted,
    Usage,
)
from tokenrelay.integrations.langchain.common import describe_error
from tokenrelay.integrations.langchain.results import answer_of, tool_result
from tokenrelay.integrations.langchain.routing import POLICIES, AnswerPolicy, AnswerRouter, StreamMode
from tokenrelay.run import new_run_id

__all__ = ["TokenrelayCallbackHandler"]

log = logging.getLogger("tokenrelay.langchain")

T = TypeVar("T")


class TokenrelayCallbackHandler(AnswerRouter, BaseCallbackHandler):
    """A LangChain callback handler that turns one run into tokenrelay events.

    Create one per request. Read the events with `events()`; the stream ends when `finish()`
    or `fail()` is called, or - with `auto_finish` (the default) - when the outermost
    LangChain run this handler saw ends. `final_only=True` selects the `json` policy (the
    tutorial's conversational-chat agent, which writes JSON actions); `policy` names any
    policy of the module docstring.
    """

    run_inline = True  # called on the caller's thread: no executor hop per token
    raise_error = False

    def __init__(
        self,
        *,
        final_only: bool = False,
        policy: AnswerPolicy | None = None,
        mode: StreamMode = "final",
        answer_nodes: Collection[str] | None = None,
        run_id: str | None = None,
        session_id: str | None = None,
        model: str = "langchain",
        auto_finish: bool = True,
        history: Sequence[tuple[str, str]] = (),
    ) -> None:
        super().__init__()
        if policy is None:
            policy = "json" if final_only else "all"
        if policy not in POLICIES:
            raise ValueError(f"unknown answer policy {policy!r}")
        if mode not in ("final", "full"):
            raise ValueError("mode must be 'final' or 'full'")
        self.policy: AnswerPolicy = policy
        self.full = mode == "full"
        self.answer_nodes = frozenset(answer_nodes) if answer_nodes is not None else None
        self.run_id = run_id or new_run_id()
        self.session_id = session_id
        self.model = model
        self.auto_finish = auto_finish
        #: (user, assistant) pairs the caller gave for this run (e.g. the OpenAI endpoint)
        self.history = tuple(history)
        self.started = time.perf_counter()
        self.first_token_s: float | None = None
        self.usage = Usage()
        self._init_queue()
        self._answer = []
        self._calls = {}
        self._parents = {}
        self._tool_runs: set[UUID] = set()
        self._tools: dict[UUID, tuple[str, str]] = {}
        self._root = None
        self._failed_in: dict[int, str] = {}  # id(exception) -> "backend" | "tool"
        self._leak_warned = False
        self._consumed = False

    # -- results ---------------------------------------------------------------------------

    def error_code(self, error: BaseException) -> str:
        """The `RunError.code` for an exception that ended the run."""
        seen: set[int] = set()
        exc: BaseException | None = error
        while exc is not None and id(exc) not in seen:
            seen.add(id(exc))
            if isinstance(exc, TokenrelayError):
                return exc.code
            where = self._failed_in.get(id(exc))
            if where is not None:
                return where
            exc = exc.__cause__ or exc.__context__
        if isinstance(error, TimeoutError):
            return "timeout"
        if isinstance(error, asyncio.CancelledError):
            return "cancelled"
        return "internal"

    # -- the consumer side ---------------------------------------------------------------------

    async def events(self) -> AsyncIterator[Event]:
        """The run's events: `RunStarted`, what the callbacks produce, then one terminal event.
        Can be iterated once."""
        if self._consumed:
            raise RuntimeError("a handler's events can be read once")
        self._consumed = True
        yield RunStarted(run_id=self.run_id, session_id=self.session_id, model=self.model)
        async for event in self._follow():
            yield event

    def _terminal(self) -> RunFinished | RunError:
        error = self._error
        if error is not None:
            code = self.error_code(error)
            if code == "internal" and not isinstance(error, TokenrelayError):
                log.error("LangChain run %s failed", self.run_id, exc_info=error)
            if isinstance(error, TokenrelayError):
                message = str(error)
            elif isinstance(error, asyncio.CancelledError):
                message = "the run was cancelled"
            else:
                message = describe_error(error)
            return RunError(message=message, code=code, answer=self.answer)
        if not self._answer:
            text = answer_of(self._result)
            if text:
                self._add_answer(text)
        return RunFinished(
            answer=self.answer,
            usage=self.usage,
            timings=Timings(first_token_s=self.first_token_s, total_s=time.perf_counter() - self.started),
        )

    def _end_run(self, run_id: UUID, outputs: Any = None, error: BaseException | None = None) -> None:
        """A LangChain run (chain, model) ended: forget it; the outermost one ends the stream."""
        with self._lock:
            self._parents.pop(run_id, None)
            ended = self._root_ended(run_id, outputs=outputs, error=error)
        if ended:
            self._wake()

    # -- LangChain callback hooks ------------------------------------------------------------------

    def tap_output_aiter(self, run_id: UUID, output: AsyncIterator[T]) -> AsyncIterator[T]:
        return output

    def tap_output_iter(self, run_id: UUID, output: Iterator[T]) -> Iterator[T]:
        return output

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        self._start_model(run_id, parent_run_id, tags, metadata, kwargs.get("invocation_params"))

    def on_llm_start(
        self,
        serialized: dict[str, Any],
        prompts: list[str],
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        self._start_model(run_id, parent_run_id, tags, metadata, kwargs.get("invocation_params"))

    def on_llm_new_token(
        self,
        token: str | list[str | dict[str, Any]],
        *,
        chunk: GenerationChunk | ChatGenerationChunk | None = None,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        **kwargs: Any,
    ) -> Any:
        with self._lock:
            before = len(self._pending)
            self._token(run_id, token, chunk)
            grew = len(self._pending) > before
        if grew and self._waiter is not None:
            self._wake()

    def on_llm_end(
        self, response: LLMResult, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any
    ) -> Any:
        self._end_model(run_id, response)

    def on_llm_error(
        self, error: BaseException, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any
    ) -> Any:
        with self._lock:
            self._calls.pop(run_id, None)
            self._failed_in.setdefault(id(error), "backend")
        self._end_run(run_id, error=error)

    def on_chain_start(
        self,
        serialized: dict[str, Any] | None,
        inputs: Any,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        with self._lock:
            self._root_seen(run_id, parent_run_id)
            self._parents[run_id] = parent_run_id

    def on_chain_end(
        self, outputs: Any, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any
    ) -> Any:
        self._end_run(run_id, outputs=outputs)

    def on_chain_error(
        self, error: BaseException, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any
    ) -> Any:
        self._end_run(run_id, error=error)

    def on_tool_start(
        self,
        serialized: dict[str, Any] | None,
        input_str: str,
        *,
        run_id: UUID,
        parent_run_id: UUID | None = None,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        inputs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        with self._lock:
            self._root_seen(run_id, parent_run_id)
            nested = self._inside_tool(parent_run_id)
            self._parents[run_id] = parent_run_id
            self._tool_runs.add(run_id)
            if nested:
                return
            name = kwargs.get("name") or (serialized or {}).get("name") or "tool"
            call_id = kwargs.get("tool_call_id") or "call_" + run_id.hex[:12]
            arguments: Any = inputs
            if arguments is None:
                try:
                    arguments = json.loads(input_str)
                except (TypeError, ValueError):
                    arguments = input_str
            self._tools[run_id] = (call_id, str(name))
            self._emit(ToolCallStarted(call_id=call_id, name=str(name), arguments=arguments))
        self._wake()

    def on_tool_end(
        self, output: Any, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any
    ) -> Any:
        with self._lock:
            self._parents.pop(run_id, None)
            self._tool_runs.discard(run_id)
            known = self._tools.pop(run_id, None)
            if known is not None:
                result, error = tool_result(output)
                self._emit(ToolCallFinished(call_id=known[0], name=known[1], result=result, error=error))
            ended = self._root_ended(run_id, outputs=output)
        if known is not None or ended:
            self._wake()

    def on_tool_error(
        self, error: BaseException, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any
    ) -> Any:
        with self._lock:
            self._parents.pop(run_id, None)
            self._tool_runs.discard(run_id)
            self._failed_in.setdefault(id(error), "tool")
            known = self._tools.pop(run_id, None)
            if known is not None:
                self._emit(ToolCallFinished(call_id=known[0], name=known[1], error=describe_error(error)))
            ended = self._root_ended(run_id, error=error)
        if known is not None or ended:
            self._wake()
