"""Which model text of a LangChain run is answer text: the per-call routing of the handler.

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
"""

from __future__ import annotations

import tokenrelay.integrations.langchain.common  # noqa: F401  (first: says which extra to install)

# isort: split

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from uuid import UUID

from langchain_core.outputs import ChatGeneration, LLMResult

from tokenrelay.agent.final_answer import FinalAnswerExtractor
from tokenrelay.agent.protocol import StreamMode
from tokenrelay.events import AnswerDelta, Narration, ReasoningDelta, Usage
from tokenrelay.integrations.langchain.common import content_parts, message_parts
from tokenrelay.integrations.langchain.queue import EventQueue
from tokenrelay.integrations.langchain.results import has_tool_calls, usage_of

__all__ = ["AnswerPolicy", "AnswerRouter", "StreamMode"]

log = logging.getLogger("tokenrelay.langchain")

AnswerPolicy = Literal["all", "json", "messages", "stream", "eager"]
POLICIES: tuple[AnswerPolicy, ...] = ("all", "json", "messages", "stream", "eager")

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


class AnswerRouter(EventQueue):
    """The producer side of the handler: the run tree, model calls, and their text routed by
    policy (called by LangChain under `_lock`)."""

    policy: AnswerPolicy
    full: bool
    answer_nodes: frozenset[str] | None
    run_id: str
    auto_finish: bool
    started: float
    first_token_s: float | None
    usage: Usage
    _answer: list[str]
    _calls: dict[UUID, _Call]
    _parents: dict[UUID, UUID | None]
    _tool_runs: set[UUID]
    _root: UUID | None
    _leak_warned: bool

    @property
    def answer(self) -> str:
        """The answer text emitted so far."""
        return "".join(self._answer)

    def _add_answer(self, text: str) -> AnswerDelta:
        if self.first_token_s is None:
            self.first_token_s = time.perf_counter() - self.started
        self._answer.append(text)
        return AnswerDelta(text=text)

    def _emit_answer(self, text: str) -> None:
        if not self._closed:
            self._pending.append(self._add_answer(text))

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
            tools = has_tool_calls(message)
            self.usage = self.usage + usage_of(message, response)
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
