"""LangChain callbacks -> one tokenrelay event stream per run.

`TokenrelayCallbackHandler` is a LangChain callback handler that one run owns: create one per
request, pass it as `callbacks=[handler]` (or `config={"callbacks": [handler]}`), and read
`handler.events()` - a well-formed tokenrelay stream (one `RunStarted` first, exactly one
`RunFinished` or `RunError` last). Because each request has its own handler, two concurrent
requests never see each other's tokens (the classic bug: one handler on a shared LLM object).
`stream_with_callbacks(factory)` runs tutorial-style code as a task and yields its events;
`CallbackAgent` serves such code through tokenrelay's server (raw /chat, typed SSE,
OpenAI-compatible, the page).

What becomes answer text (`AnswerDelta`), by policy:

* `all` (the tutorial's behaviour, `TokenrelayCallbackHandler()`): every token of every model
  call, except calls made inside a tool (a sub-chain such as the tutorial's LLMMathChain is
  never the answer) and calls tagged `nostream`;
* `json` (`final_only=True`): JSON-action agents (`{"action": "Final Answer", "action_input":
  ...}`): each model call's tokens go through tokenrelay's `FinalAnswerExtractor`, so only the
  decoded `action_input` of a final answer streams; a call whose output has no JSON at all
  counts as a plain-text final answer when it ends, unless it made native tool calls;
* `messages` (what `RunnableAgent` uses; exact): a model call that was offered tools
  (`tools`/`functions` in its invocation params) may end with tool calls, and text of such a
  message is never answer text - so its text is held until the call ends and released as
  answer only if the message has no tool calls. A call offered no tools streams live. This
  never puts text of a tool-calling message into the answer, at the price of a tool-enabled
  call's final answer arriving in one piece when the call ends;
* `stream` (what `RunnableAgent` uses by default): every candidate call streams live from its
  first text token; if the message then turns into a tool call (a tool-call chunk arrives, or
  the finished message has tool calls), the text it streamed is re-labelled with a `Narration`
  event - still shown, never part of the final answer - and its later text is reasoning. Exact
  and token by token (see `tokenrelay.events.Narration`);
* `eager`: like `messages`, but a tool-enabled call streams live from its first text token
  when no tool-call chunk came before it. Exact for models that put tool calls before any
  text (or write no text in tool-calling messages, as OpenAI's usually do); a model that writes
  text and then calls a tool (Anthropic's often do) leaks that text into the answer - a
  warning is logged when that happens.

With `answer_nodes` only model calls made in those LangGraph nodes (`metadata
["langgraph_node"]`) can be answer text. In `full` mode, text that is not answer text (held text
of tool-calling messages, other model calls, raw JSON-action output, reasoning blocks) is
`ReasoningDelta`. Tools run as part of the run become `ToolCallStarted`/`ToolCallFinished`
(call id = the model's tool call id when LangChain passes it; tools run inside another tool
are not reported). If no answer text streamed at all (a model that does not stream, say), the
answer is taken from the run's result when it ends: the last AI message of a graph state, an
AgentExecutor's `output`, a string, a structured response.

Handlers run inline (`run_inline = True`) and take a lock per callback, so they work both for
async code on the event loop and for sync code that LangChain or LangGraph runs in worker
threads. Attaching one also makes chat models stream when called with `invoke`/`ainvoke`
(it has the `tap_output_*` methods LangChain looks for), as LangGraph's own `messages` mode does.
"""

from __future__ import annotations

import tokenrelay.integrations.langchain_common  # noqa: F401  (first: says which extra to install)

# isort: split

import asyncio
import inspect
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, GenerationChunk, LLMResult

from tokenrelay.agent.final_answer import FinalAnswerExtractor
from tokenrelay.errors import TokenrelayError
from tokenrelay.events import (
    AnswerDelta,
    Event,
    Narration,
    ReasoningDelta,
    RunError,
    RunFinished,
    RunStarted,
    Timings,
    ToolCallFinished,
    ToolCallStarted,
    Usage,
)
from tokenrelay.integrations.langchain_common import content_parts, describe_error, message_parts
from tokenrelay.run import new_run_id

__all__ = [
    "AnswerPolicy",
    "CallbackAgent",
    "TokenrelayCallbackHandler",
    "answer_of",
    "stream_with_callbacks",
]

log = logging.getLogger("tokenrelay.langchain")

AnswerPolicy = Literal["all", "json", "messages", "stream", "eager"]
StreamMode = Literal["final", "full"]
T = TypeVar("T")

_NOSTREAM = "nostream"  # langgraph.constants.TAG_NOSTREAM: "don't stream this model's tokens"


@dataclass(slots=True)
class _Call:
    """One model call in flight."""

    candidate: bool  # may produce answer text
    hold: bool  # answer text waits for the end of the call
    held: list[str] = field(default_factory=list)
    live: bool = False  # answer text of this call has been emitted while streaming
    said: list[str] = field(default_factory=list)  # that text (policy `stream`: narration if tools follow)
    tool_seen: bool = False  # a tool-call chunk arrived
    streamed: bool = False  # any text token arrived
    extractor: FinalAnswerExtractor | None = None


def _has_tool_calls(message: Any) -> bool:
    if getattr(message, "tool_calls", None) or getattr(message, "invalid_tool_calls", None):
        return True
    extra = getattr(message, "additional_kwargs", None)
    return bool(extra and (extra.get("tool_calls") or extra.get("function_call")))


def _tool_result(output: Any) -> tuple[str | None, str | None]:
    """(result, error) of a tool's output (a ToolMessage, a Command, or any value)."""
    if isinstance(output, ToolMessage):
        text = content_parts(output.content)[0] if not isinstance(output.content, str) else output.content
        return (None, text) if output.status == "error" else (text, None)
    if isinstance(output, str):
        return output, None
    messages = getattr(output, "update", None)  # a LangGraph Command from a tool
    if isinstance(messages, Mapping):
        for item in messages.get("messages") or ():
            if isinstance(item, ToolMessage):
                return _tool_result(item)
    try:
        return json.dumps(output, ensure_ascii=False, default=str), None
    except (TypeError, ValueError):
        return str(output), None


def answer_of(result: Any) -> str:
    """The answer text in a run's result, for runs whose answer did not stream: a string, an
    AI message without tool calls, an AgentExecutor's `output`, the last message of a graph
    state, or a structured response (as JSON)."""
    if result is None:
        return ""
    if isinstance(result, str):
        return result
    if isinstance(result, BaseMessage):
        if isinstance(result, AIMessage) and not _has_tool_calls(result):
            return message_parts(result)[0]
        return ""
    if isinstance(result, Mapping):
        output = result.get("output")
        if isinstance(output, str):
            return output
        structured = result.get("structured_response")
        if structured is not None:
            dump = getattr(structured, "model_dump", None)
            value = dump() if callable(dump) else structured
            try:
                return json.dumps(value, ensure_ascii=False, default=str)
            except (TypeError, ValueError):
                return str(value)
        messages = result.get("messages")
        if isinstance(messages, Sequence) and messages and isinstance(messages[-1], AIMessage):
            return answer_of(messages[-1])
        for key in ("answer", "text", "result"):
            if isinstance(result.get(key), str):
                return str(result[key])
    return ""


class TokenrelayCallbackHandler(BaseCallbackHandler):
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
        if policy not in ("all", "json", "messages", "stream", "eager"):
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
        self._answer: list[str] = []
        self._lock = threading.Lock()
        self._pending: list[Event] = []
        self._waiter: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._calls: dict[UUID, _Call] = {}
        self._parents: dict[UUID, UUID | None] = {}
        self._tool_runs: set[UUID] = set()
        self._tools: dict[UUID, tuple[str, str]] = {}
        self._root: UUID | None = None
        self._closed = False
        self._result: Any = None
        self._error: BaseException | None = None
        self._failed_in: dict[int, str] = {}  # id(exception) -> "backend" | "tool"
        self._leak_warned = False
        self._consumed = False

    # -- results ---------------------------------------------------------------------------

    @property
    def answer(self) -> str:
        """The answer text emitted so far."""
        return "".join(self._answer)

    @property
    def closed(self) -> bool:
        return self._closed

    def finish(self, result: Any = None) -> None:
        """End the run successfully; `result` supplies the answer if none streamed."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._result = result
        self._wake()

    def fail(self, error: BaseException) -> None:
        """End the run with an error (it becomes the terminal `RunError`)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._error = error
        self._wake()

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

    def bind_loop(self) -> None:
        """Bind to the running event loop (done by `events()`; call it first when callbacks
        may arrive from other threads before iteration starts)."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._loop_thread = threading.get_ident()

    def _wake(self) -> None:
        loop = self._loop
        if self._waiter is None or loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            self._wake_in_loop()
        else:
            try:
                loop.call_soon_threadsafe(self._wake_in_loop)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass

    def _wake_in_loop(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def events(self) -> AsyncIterator[Event]:
        """The run's events: `RunStarted`, what the callbacks produce, then one terminal event.
        Can be iterated once."""
        if self._consumed:
            raise RuntimeError("a handler's events can be read once")
        self._consumed = True
        yield RunStarted(run_id=self.run_id, session_id=self.session_id, model=self.model)
        async for event in self._follow():
            yield event

    async def _follow(self) -> AsyncIterator[Event]:
        """Everything after `RunStarted`, ending with the terminal event."""
        self.bind_loop()
        loop = self._loop
        assert loop is not None
        while True:
            with self._lock:
                batch, self._pending = self._pending, []
                closed = self._closed
                if not batch and not closed:
                    waiter: asyncio.Future[None] = loop.create_future()
                    self._waiter = waiter
            if batch:
                for event in batch:
                    yield event
                continue
            if closed:
                break
            await waiter
        yield self._terminal()

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

    # -- the producer side (called by LangChain, under the lock) ---------------------------

    def _add_answer(self, text: str) -> AnswerDelta:
        if self.first_token_s is None:
            self.first_token_s = time.perf_counter() - self.started
        self._answer.append(text)
        return AnswerDelta(text=text)

    def _emit_answer(self, text: str) -> None:
        if not self._closed:
            self._pending.append(self._add_answer(text))

    def _emit(self, event: Event) -> None:
        if not self._closed:
            self._pending.append(event)

    def _inside_tool(self, run_id: UUID | None) -> bool:
        hops = 0
        while run_id is not None and hops < 1000:
            if run_id in self._tool_runs:
                return True
            run_id = self._parents.get(run_id)
            hops += 1
        return False

    def _root_seen(self, run_id: UUID, parent_run_id: UUID | None) -> None:
        if self._root is None and parent_run_id is None:
            self._root = run_id

    def _root_ended(self, run_id: UUID, outputs: Any = None, error: BaseException | None = None) -> bool:
        """At the end of the outermost run, with `auto_finish`: close (the caller wakes)."""
        if not self.auto_finish or run_id != self._root or self._closed:
            return False
        self._closed = True
        if error is not None:
            self._error = error
        else:
            self._result = outputs
        return True

    def _start_model(
        self,
        run_id: UUID,
        parent_run_id: UUID | None,
        tags: list[str] | None,
        metadata: dict[str, Any] | None,
        invocation_params: Mapping[str, Any] | None,
    ) -> None:
        with self._lock:
            self._root_seen(run_id, parent_run_id)
            self._parents[run_id] = parent_run_id
            candidate = not (tags and _NOSTREAM in tags) and not self._inside_tool(parent_run_id)
            if candidate and self.answer_nodes is not None:
                node = metadata.get("langgraph_node") if metadata else None
                candidate = node in self.answer_nodes
            policy = self.policy
            offered = bool(
                invocation_params and (invocation_params.get("tools") or invocation_params.get("functions"))
            )
            call = _Call(candidate=candidate, hold=offered and policy == "messages")
            if candidate and policy == "json":
                call.extractor = FinalAnswerExtractor()
            self._calls[run_id] = call

    def _token(self, run_id: UUID, token: Any, chunk: Any) -> None:
        call = self._calls.get(run_id)
        if call is None:
            return
        message = getattr(chunk, "message", None)
        if message is not None:
            content = message.content
            if type(content) is str and not message.additional_kwargs:
                text, thinking = content, ""
            else:
                text, thinking = message_parts(message)
            if not call.tool_seen and getattr(message, "tool_call_chunks", None):
                call.tool_seen = True
                if call.live and self.policy == "stream":
                    self._narrate(call)
        elif isinstance(token, str):
            text, thinking = token, ""
        else:
            text, thinking = content_parts(token)
        if thinking and self.full:
            self._emit(ReasoningDelta(text=thinking))
        if not text:
            return
        call.streamed = True
        self._route(call, text)

    def _route(self, call: _Call, text: str) -> None:
        if not call.candidate:
            if self.full:
                self._emit(ReasoningDelta(text=text))
            return
        policy = self.policy
        if policy == "all":
            self._emit_answer(text)
        elif policy == "json":
            if self.full:
                self._emit(ReasoningDelta(text=text))
            assert call.extractor is not None
            out = call.extractor.feed(text)
            if out:
                call.live = True
                self._emit_answer(out)
        elif call.live:
            if policy == "stream":
                call.said.append(text)
            self._emit_answer(text)
        elif call.hold or call.tool_seen or call.held:
            call.held.append(text)
        else:
            call.live = True
            if policy == "stream":
                call.said.append(text)
            self._emit_answer(text)

    def _narrate(self, call: _Call) -> None:
        """The call's live text preceded a tool call: re-label it as narration."""
        call.live = False
        text = "".join(call.said)
        call.said = []
        answer = self.answer
        if not text or not answer.endswith(text):  # another call's answer text came after it
            log.warning("run %s: streamed text of a tool-calling message stays in the answer", self.run_id)
            return
        if text.strip() and not text.endswith("\n\n"):
            separator = "\n" if text.endswith("\n") else "\n\n"
            self._emit_answer(separator)
            text += separator
        shown = self.answer
        self._answer = [shown[: len(shown) - len(text)]]
        self._emit(Narration(text=text))

    def _end_model(self, run_id: UUID, response: LLMResult | None) -> None:
        with self._lock:
            self._parents.pop(run_id, None)
            call = self._calls.pop(run_id, None)
            if call is None:
                return
            generation = response.generations[0][0] if response and response.generations else None
            generation_list = response.generations[0] if response and response.generations else []
            message = generation.message if isinstance(generation, ChatGeneration) else None
            tools = _has_tool_calls(message)
            if message is not None:
                usage = getattr(message, "usage_metadata", None)
                if usage:
                    self.usage = self.usage + Usage(
                        prompt_tokens=usage.get("input_tokens", 0) or 0,
                        completion_tokens=usage.get("output_tokens", 0) or 0,
                    )
            elif response is not None and response.llm_output:
                counts = response.llm_output.get("token_usage") or {}
                if isinstance(counts, Mapping):
                    self.usage = self.usage + Usage(
                        prompt_tokens=counts.get("prompt_tokens", 0) or 0,
                        completion_tokens=counts.get("completion_tokens", 0) or 0,
                    )
            if not call.streamed and generation_list:
                # the model did not stream: route its whole text now, knowing the outcome
                if message is not None:
                    text, thinking = message_parts(message)
                else:
                    text, thinking = getattr(generation, "text", "") or "", ""
                if thinking and self.full:
                    self._emit(ReasoningDelta(text=thinking))
                if text:
                    if tools and call.candidate and self.policy != "json":
                        call.hold = True
                    self._route(call, text)
            if call.extractor is not None:
                tail = call.extractor.finish()
                if tail and not tools:
                    self._emit_answer(tail)
            if call.held:
                text = "".join(call.held)
                if call.candidate and not tools:
                    self._emit_answer(text)
                elif self.full:
                    self._emit(ReasoningDelta(text=text))
            elif call.live and tools and self.policy == "stream":
                self._narrate(call)
            elif call.live and tools and self.policy in ("eager", "messages") and not self._leak_warned:
                self._leak_warned = True
                log.warning(
                    "run %s: text of a model message that calls tools was streamed as answer "
                    "(answer policy %r)",
                    self.run_id,
                    self.policy,
                )
            ended = self._root_ended(run_id, outputs=message)
        if ended or self._pending:
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
            self._parents.pop(run_id, None)
            self._calls.pop(run_id, None)
            self._failed_in.setdefault(id(error), "backend")
            ended = self._root_ended(run_id, error=error)
        if ended:
            self._wake()

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
        with self._lock:
            self._parents.pop(run_id, None)
            ended = self._root_ended(run_id, outputs=outputs)
        if ended:
            self._wake()

    def on_chain_error(
        self, error: BaseException, *, run_id: UUID, parent_run_id: UUID | None = None, **kwargs: Any
    ) -> Any:
        with self._lock:
            self._parents.pop(run_id, None)
            ended = self._root_ended(run_id, error=error)
        if ended:
            self._wake()

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
                result, error = _tool_result(output)
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


async def _settle(task: asyncio.Task[Any]) -> None:
    """Cancel `task` if it still runs and wait (bounded) for it to finish; never raises."""
    if not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=10)
    if task.done() and not task.cancelled():
        task.exception()  # retrieved: no "exception was never retrieved" warning


async def follow_task(handler: TokenrelayCallbackHandler, work: Awaitable[Any]) -> AsyncIterator[Event]:
    """Run `work` as a task and yield `handler`'s events after `RunStarted` (the caller yields
    that), ending when the task ends: its result or exception becomes the terminal event.
    If the consumer stops early (or is cancelled) the task is cancelled."""
    handler.bind_loop()

    async def main() -> None:
        try:
            result = await work
        except asyncio.CancelledError:
            handler.fail(asyncio.CancelledError("the run was cancelled"))
            raise
        except BaseException as exc:  # reported as the terminal RunError
            handler.fail(exc)
            return
        handler.finish(result)

    task = asyncio.create_task(main(), name=f"langchain {handler.run_id}")
    try:
        async for event in handler._follow():
            yield event
    finally:
        await _settle(task)


async def stream_with_callbacks(
    factory: Callable[[TokenrelayCallbackHandler], Awaitable[Any]],
    *,
    final_only: bool = False,
    policy: AnswerPolicy | None = None,
    mode: StreamMode = "final",
    answer_nodes: Collection[str] | None = None,
    run_id: str | None = None,
    session_id: str | None = None,
    model: str = "langchain",
) -> AsyncIterator[Event]:
    """Run tutorial-style code with a fresh handler and stream its events.

    `factory(handler)` starts the user's run with `callbacks=[handler]` and returns an
    awaitable (for sync code: `lambda h: asyncio.to_thread(chain.invoke, x, {"callbacks": [h]})`).
    The run ends when that awaitable does; its result supplies the answer if none streamed."""
    handler = TokenrelayCallbackHandler(
        final_only=final_only,
        policy=policy,
        mode=mode,
        answer_nodes=answer_nodes,
        run_id=run_id,
        session_id=session_id,
        model=model,
        auto_finish=False,
    )
    yield RunStarted(run_id=handler.run_id, session_id=session_id, model=model)
    try:
        work = factory(handler)
        if not inspect.isawaitable(work):
            raise TypeError("the factory must return an awaitable (wrap sync code in asyncio.to_thread)")
    except Exception as exc:
        handler.fail(exc)
        yield handler._terminal()
        return
    async for event in follow_task(handler, work):
        yield event


class CallbackAgent:
    """Serve tutorial-style LangChain code through tokenrelay (raw /chat, SSE, OpenAI, page).

    `factory(text, handler)` runs the user's chain or agent for one request with
    `callbacks=[handler]` and returns an awaitable; the handler is new for every run and
    carries `run_id`, `session_id` and `history` (the (user, assistant) pairs the caller gave)
    for code that needs them. Has the `run(...)` signature of tokenrelay's `Agent`."""

    def __init__(
        self,
        factory: Callable[[str, TokenrelayCallbackHandler], Awaitable[Any]],
        *,
        final_only: bool = False,
        policy: AnswerPolicy | None = None,
        answer_nodes: Collection[str] | None = None,
        name: str = "langchain",
    ) -> None:
        self.factory = factory
        self.final_only = final_only
        self.policy = policy
        self.answer_nodes = answer_nodes
        self.name = name

    async def run(
        self,
        text: str,
        *,
        session_id: str | None = None,
        mode: StreamMode = "final",
        run_id: str | None = None,
        history: Sequence[tuple[str, str]] = (),
        answer_policy: Literal["stream", "hold"] | None = None,
    ) -> AsyncIterator[Event]:
        """`answer_policy` is accepted for the server's sake and ignored: the factory's own
        policy decides what is answer text."""
        handler = TokenrelayCallbackHandler(
            final_only=self.final_only,
            policy=self.policy,
            mode=mode,
            answer_nodes=self.answer_nodes,
            run_id=run_id,
            session_id=session_id,
            model=self.name,
            auto_finish=False,
            history=history,
        )
        yield RunStarted(run_id=handler.run_id, session_id=session_id, model=self.name)
        try:
            work = self.factory(text, handler)
            if not inspect.isawaitable(work):
                raise TypeError("the factory must return an awaitable (wrap sync code in asyncio.to_thread)")
        except Exception as exc:
            handler.fail(exc)
            yield handler._terminal()
            return
        async for event in follow_task(handler, work):
            yield event
