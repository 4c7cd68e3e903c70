"""The agent: a conversational tool-using loop with per-session memory, as one event stream.

This is the tutorial's agent (conversational ReAct, memory window k=5, a math tool,
`max_iterations=3`, `early_stopping_method="generate"`) made exact and safe:

* only the final answer is emitted as `AnswerDelta`, character-exact, while it streams;
  tool calls and results are their own events; raw model output is `ReasoningDelta` and
  only in `full` mode;
* memory is per session: the user's message is stored before the first model call and
  the answer (complete, partial/interrupted, or failed) when the run ends, on every path,
  including the consumer leaving and task cancellation;
* every run ends with exactly one `RunFinished` or `RunError`: backend failures, tool
  failures and bugs never escape as exceptions and never hang the stream;
* `early_stopping_method="generate"` makes one last model call, constrained to a final
  answer, and always yields one.

Two tool protocols: `json` (the tutorial's `{"action", "action_input"}` blobs, enforced by
grammar on llama.cpp) and `native` (OpenAI tool calls); `auto` picks native when the backend
supports it.

Answer policy. `stream` (the default): answer text goes out the moment the model writes it.
If the same model message then turns into a tool call (a native tool-call fragment arrives,
or a JSON action block is recognized after prose), the text already streamed was the model
speaking before acting: it stays shown, a `Narration` event re-labels it, and it is not part
of the final answer (`RunFinished.answer`, the stored turn). `hold`: a message's text is held
until the message ends and is known to be the final answer — only final-answer text is ever
streamed, at the cost of per-message rather than per-token latency on native backends and for
prose on the JSON protocol.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import anyio

from tokenrelay.agent.embedded import embedded_policy
from tokenrelay.agent.final_answer import FinalAnswerExtractor
from tokenrelay.agent.prompts import (
    DEFAULT_SYSTEM,
    FINAL_ANSWER,
    FINAL_CALL_MESSAGE,
    FORCED_STOP_MESSAGE,
    action_schema,
    invalid_output_message,
    json_system_prompt,
    tool_response_message,
)
from tokenrelay.agent.prose import ProseStreamer
from tokenrelay.backends.base import (
    Backend,
    FinishChunk,
    GenerationSettings,
    TextChunk,
    ThinkingChunk,
    ToolCallChunk,
)
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
    new_answer_delta,
)
from tokenrelay.memory.base import SessionStore, Step, Turn, TurnStatus, remembered
from tokenrelay.messages import Message, ToolCall
from tokenrelay.run import new_run_id
from tokenrelay.tools import default_tools
from tokenrelay.tools.registry import Tool, ToolOutcome, as_tools

__all__ = ["Agent", "AnswerPolicy", "StreamMode", "ToolProtocol"]

log = logging.getLogger("tokenrelay.agent")

StreamMode = Literal["final", "full"]
ToolProtocol = Literal["auto", "native", "json"]
AnswerPolicy = Literal["stream", "hold"]


@dataclass
class _RunState:
    """What one run has produced so far; the partial answer survives any failure."""

    started: float = field(default_factory=time.perf_counter)
    parts: list[str] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    first_token_s: float | None = None
    steps: list[tuple[str, Any, str]] = field(default_factory=list)
    #: the conversation without agent instructions, for a plain final-answer call
    plain: list[Message] = field(default_factory=list)
    policy: AnswerPolicy = "stream"
    #: narration and tool steps, in order, for the stored turn
    record: list[Step] = field(default_factory=list)
    #: why the model call that wrote the final answer stopped ("stop" or "length")
    finish_reason: str = "stop"
    #: this run's sampling settings (the agent's, or the run's override)
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    #: the system prompt for this run (the agent's, plus what the run's caller added)
    system_prompt: str | None = None

    @property
    def answer(self) -> str:
        return "".join(self.parts)

    def answer_delta(self, text: str) -> AnswerDelta:
        if self.first_token_s is None:
            self.first_token_s = time.perf_counter() - self.started
        self.parts.append(text)
        return new_answer_delta(text)

    def narrate(self) -> list[Event]:
        """Re-label the answer text streamed so far as narration: the model spoke, then acted.

        A blank line is streamed first (unless the text ends with one) so that consumers that
        ignore `Narration` show narration and answer as separate paragraphs."""
        text = "".join(self.parts)
        if not text:
            return []
        events: list[Event] = []
        if text.strip() and not text.endswith("\n\n"):
            separator = "\n" if text.endswith("\n") else "\n\n"
            events.append(self.answer_delta(separator))
            text += separator
        self.parts.clear()
        self.record.append({"type": "narration", "text": text})
        events.append(Narration(text=text))
        return events

    def finished(self, reason: str | None) -> None:
        """The model call that wrote the final answer ended with `reason`."""
        self.finish_reason = "length" if reason == "length" else "stop"


class Agent:
    """A conversational agent over any backend. One `Agent` serves many concurrent runs:
    it holds configuration only, and each `run` keeps its state to itself."""

    def __init__(
        self,
        backend: Backend,
        *,
        tools: Sequence[Tool | Callable[..., Any]] | None = None,
        store: SessionStore | None = None,
        memory_k: int = 5,
        max_iterations: int = 3,
        early_stopping_method: Literal["generate", "force"] = "generate",
        tool_protocol: ToolProtocol = "auto",
        tool_timeout_s: float = 30.0,
        system_prompt: str | None = None,
        generation: GenerationSettings = GenerationSettings(),
        verbose: bool = False,
        return_intermediate_steps: bool = False,
        checkpoint_s: float = 1.0,
        plain_final_answer: bool | None = None,
        answer_policy: AnswerPolicy = "stream",
    ) -> None:
        if max_iterations < 1:
            raise ValueError("max_iterations must be at least 1")
        if early_stopping_method not in ("generate", "force"):
            raise ValueError("early_stopping_method must be 'generate' or 'force'")
        if answer_policy not in ("stream", "hold"):
            raise ValueError("answer_policy must be 'stream' or 'hold'")
        self.answer_policy: AnswerPolicy = answer_policy
        self.backend = backend
        self.tools = as_tools(default_tools() if tools is None else tools)
        self._by_name = {t.name: t for t in self.tools}
        self.store = store
        self.memory_k = memory_k
        self.max_iterations = max_iterations
        self.early_stopping_method = early_stopping_method
        if tool_protocol == "auto":
            tool_protocol = "native" if backend.supports_native_tools else "json"
        self.tool_protocol: Literal["native", "json"] = tool_protocol
        self.tool_timeout_s = tool_timeout_s
        self.system_prompt = system_prompt
        self.generation = generation
        self.verbose = verbose
        self.return_intermediate_steps = return_intermediate_steps
        self.checkpoint_s = checkpoint_s
        # Small embedded models pick actions well under a grammar but write poor prose inside
        # a JSON string: on such backends the action is decided under the grammar and a final
        # answer is then written by a second, plain call (streamed as is, still exact).
        self.plain_final_answer = (
            backend.enforces_json_schema if plain_final_answer is None else plain_final_answer
        )
        # In-process models (llama.cpp) decide by their own likelihoods instead: agent/embedded.py
        self._embedded = (
            embedded_policy(backend, self.tools)
            if tool_protocol == "json" and plain_final_answer is not False
            else None
        )

    async def warm(self) -> None:
        """Do now what the first run would pay for (the embedded agent's shared prompts)."""
        if self._embedded is not None:
            await self._embedded.warm()

    # -- the run -----------------------------------------------------------------------

    async def run(
        self,
        text: str,
        *,
        session_id: str | None = None,
        mode: StreamMode = "final",
        run_id: str | None = None,
        history: Sequence[tuple[str, str]] = (),
        answer_policy: AnswerPolicy | None = None,
        generation: GenerationSettings | None = None,
        system: str | None = None,
    ) -> AsyncGenerator[Event, None]:
        """Answer `text`, continuing `session_id`'s conversation when a store is set.

        `history` is (user, assistant) pairs given by the caller (stateless APIs such as the
        OpenAI-compatible endpoint); it comes before the session's own memory.
        `answer_policy` overrides the agent's for this run. `generation` replaces the agent's
        sampling settings for this run's answer-writing model calls; `system` is added to the
        agent's system prompt for this run."""
        run_id = run_id or new_run_id()
        state = _RunState(
            policy=answer_policy or self.answer_policy,
            generation=self.generation if generation is None else generation,
            system_prompt=_join_system(self.system_prompt, system),
        )
        yield RunStarted(run_id=run_id, session_id=session_id, model=self.backend.name)
        turn_id: int | None = None
        status: TurnStatus = "interrupted"
        error: str | None = None
        history_given = history
        try:
            turns: list[Turn] = []
            document: str | None = None
            if self.store is not None and session_id is not None:
                if self.memory_k:
                    turns = await self.store.history(session_id, limit=self.memory_k, answered=True)
                doc = await self.store.get_document(session_id)
                document = doc.prompt_text() if doc else None
                turn_id = await self.store.begin_turn(session_id, run_id=run_id, user_text=text)
            checkpoint_at = time.monotonic() + self.checkpoint_s
            async with aclosing(
                self._loop(text, turns, document, mode, state, given=history_given)
            ) as events:
                async for event in events:
                    yield event
                    if (
                        turn_id is not None
                        and type(event) is AnswerDelta
                        and time.monotonic() >= checkpoint_at
                    ):
                        # a crash now loses at most the last `checkpoint_s` of the answer
                        assert self.store is not None
                        await self.store.update_partial(turn_id, state.answer)
                        checkpoint_at = time.monotonic() + self.checkpoint_s
            status = "complete"
        except TokenrelayError as exc:
            status, error = "failed", str(exc)
            log.info("run %s failed: %s", run_id, exc)
            yield RunError(message=str(exc), code=exc.code, answer=state.answer)
        except Exception as exc:  # a bug must still end the stream with an error event
            status, error = "failed", f"internal error: {type(exc).__name__}"
            log.exception("run %s crashed", run_id)
            yield RunError(message=error, code="internal", answer=state.answer)
        finally:
            if turn_id is not None and self.store is not None:
                # shielded: a client disconnect cancels this task, but the turn must be stored
                with anyio.CancelScope(shield=True):
                    try:
                        await self.store.finish_turn(
                            turn_id,
                            answer=state.answer,
                            status=status,
                            error=error,
                            finish_reason=state.finish_reason if status == "complete" else None,
                            steps=state.record,
                        )
                    except Exception:
                        log.exception("run %s: storing the turn failed", run_id)
        if status == "complete":
            yield RunFinished(
                answer=state.answer,
                usage=state.usage,
                timings=Timings(
                    first_token_s=state.first_token_s, total_s=time.perf_counter() - state.started
                ),
                finish_reason=state.finish_reason,
                intermediate_steps=tuple(state.steps) if self.return_intermediate_steps else (),
            )

    async def _loop(
        self,
        text: str,
        turns: list[Turn],
        document: str | None,
        mode: StreamMode,
        state: _RunState,
        *,
        given: Sequence[tuple[str, str]],
    ) -> AsyncGenerator[Event, None]:
        if self._embedded is not None:
            async with aclosing(
                self._embedded.run(
                    self._plain_messages(text, turns, document, given, state.system_prompt),
                    text,
                    document,
                    mode,
                    _EmbeddedHooks(self, state),
                    forced_stop=FORCED_STOP_MESSAGE
                    if self.max_iterations < 2 and self.early_stopping_method == "force"
                    else None,
                )
            ) as embedded_events:
                async for embedded_event in embedded_events:
                    yield embedded_event
            return
        messages = self._initial_messages(text, turns, document, given, state.system_prompt)
        if self.tool_protocol == "json" and self.plain_final_answer:
            state.plain = self._plain_messages(text, turns, document, given, state.system_prompt)
        if self.tool_protocol == "native":
            step = self._native_step
        else:
            step = self._embedded_step if state.plain else self._json_step
        for iteration in range(self.max_iterations):
            done = False
            async with aclosing(step(messages, mode, state, final_only=False)) as events:
                async for event in events:
                    if event is _DONE:
                        done = True
                    else:
                        yield event  # type: ignore[misc]
            if done:
                return
            log.log(
                logging.INFO if self.verbose else logging.DEBUG,
                "iteration %d ended without an answer",
                iteration,
            )
        if self.early_stopping_method == "force" or not self.tools:
            yield state.answer_delta(FORCED_STOP_MESSAGE)
            return
        messages.append(Message.user(FINAL_CALL_MESSAGE))
        async with aclosing(step(messages, mode, state, final_only=True)) as events:
            async for event in events:
                if event is not _DONE:
                    yield event  # type: ignore[misc]
        if not state.parts:
            yield state.answer_delta(FORCED_STOP_MESSAGE)

    def _initial_messages(
        self,
        text: str,
        turns: list[Turn],
        document: str | None,
        given: Sequence[tuple[str, str]],
        system_prompt: str | None,
    ) -> list[Message]:
        if self.tool_protocol == "json":
            system = json_system_prompt(system_prompt, self.tools, document)
        else:
            system = system_prompt or DEFAULT_SYSTEM
            if document:
                system += "\n\nDOCUMENT - the user attached this document; answer from it:\n" + document
        messages = [Message.system(system)]
        for user_text, answer in given:
            messages += [Message.user(user_text), Message.assistant(answer)]
        for user_text, answer in remembered(turns):
            messages += [Message.user(user_text), Message.assistant(answer)]
        messages.append(Message.user(text))
        return messages

    def _plain_messages(
        self,
        text: str,
        turns: list[Turn],
        document: str | None,
        given: Sequence[tuple[str, str]],
        system_prompt: str | None,
    ) -> list[Message]:
        system = system_prompt or DEFAULT_SYSTEM
        if document:
            system += "\n\nDOCUMENT - the user attached this document; answer from it:\n" + document
        messages = [Message.system(system)]
        for user_text, answer in given:
            messages += [Message.user(user_text), Message.assistant(answer)]
        for user_text, answer in remembered(turns):
            messages += [Message.user(user_text), Message.assistant(answer)]
        messages.append(Message.user(text))
        return messages

    async def _plain_answer(self, state: _RunState) -> AsyncGenerator[Event, None]:
        """The final answer written by a plain model call, with what the tools found."""
        messages = list(state.plain)
        if state.steps:
            notes = "\n".join(
                f"- {name}({tool_input}) = {observation}" for name, tool_input, observation in state.steps
            )
            last = messages[-1]
            messages[-1] = Message.user(f"{last.content}\n\n(Results of tools you used:\n{notes})")
        async with aclosing(self.backend.stream(messages, settings=state.generation)) as chunks:
            async for chunk in chunks:
                if type(chunk) is TextChunk:
                    if chunk.text:
                        yield state.answer_delta(chunk.text)
                elif isinstance(chunk, FinishChunk):
                    state.finished(chunk.reason)
                    if chunk.usage is not None:
                        state.usage = state.usage + chunk.usage

    # -- one model call, embedded (grammar-decided action, plain final answer) ------------

    async def _embedded_step(
        self, messages: list[Message], mode: StreamMode, state: _RunState, *, final_only: bool
    ) -> AsyncGenerator[Event | object, None]:
        if final_only:  # out of iterations: just answer
            async with aclosing(self._plain_answer(state)) as answer:
                async for event in answer:
                    yield event
            yield _DONE
            return
        # deciding, not writing: near-greedy, under the agent's own limits (a run's settings,
        # max_tokens, stop..., shape the answer, which the plain call writes)
        settings = replace(self.generation, json_schema=action_schema(self.tools, final_only=final_only))
        settings = replace(settings, temperature=0.0)
        extractor = FinalAnswerExtractor()
        full = mode == "full"
        async with aclosing(self.backend.stream(messages, settings=settings)) as chunks:
            async for chunk in chunks:
                if type(chunk) is TextChunk:
                    if full:
                        yield ReasoningDelta(text=chunk.text)
                    extractor.feed(chunk.text)
                    if extractor.is_final:
                        break  # decided: stop this call, the plain call writes the answer
                elif isinstance(chunk, FinishChunk):
                    if chunk.usage is not None:
                        state.usage = state.usage + chunk.usage
                elif isinstance(chunk, ThinkingChunk) and full:
                    yield ReasoningDelta(text=chunk.text)
        if not extractor.is_final:
            extractor.finish()
        if extractor.is_final:  # (also a plain-text final answer, only recognisable at the end)
            async with aclosing(self._plain_answer(state)) as answer:
                async for event in answer:
                    yield event
            yield _DONE
            return
        raw = extractor.raw
        if extractor.error is not None or extractor.action is None:
            problem = extractor.error or 'missing "action"'
            log.log(logging.INFO if self.verbose else logging.DEBUG, "unusable model output: %s", problem)
            messages += [Message.assistant(raw), Message.user(invalid_output_message(problem))]
            return
        if any(s[0] == extractor.action and s[1] == extractor.action_input for s in state.steps):
            # a small model repeating a call it already made has its answer: write it
            async with aclosing(self._plain_answer(state)) as answer:
                async for event in answer:
                    yield event
            yield _DONE
            return
        call_id = "call_" + uuid.uuid4().hex[:12]
        async for event in self._call_tool(call_id, extractor.action, extractor.action_input, state):
            yield event
        messages += [Message.assistant(raw), Message.user(tool_response_message(state.steps[-1][2]))]

    # -- one model call, JSON action protocol ---------------------------------------------

    async def _json_step(
        self, messages: list[Message], mode: StreamMode, state: _RunState, *, final_only: bool
    ) -> AsyncGenerator[Event | object, None]:
        """One model call writing a JSON action. The final answer's text streams out of the
        action as it is decoded; with the `stream` policy, prose the model writes instead of (or
        before) an action streams too, and is re-labelled as narration if an action follows."""
        settings = replace(state.generation, json_schema=action_schema(self.tools, final_only=final_only))
        full = mode == "full"
        streamer = ProseStreamer() if state.policy == "stream" else None
        extractor = None if streamer is not None else FinalAnswerExtractor()
        reason: str | None = None
        async with aclosing(self.backend.stream(messages, settings=settings)) as chunks:
            async for chunk in chunks:
                if type(chunk) is TextChunk:
                    text = chunk.text
                    if full:
                        yield ReasoningDelta(text=text)
                    if extractor is not None:  # the per-token path of a final answer
                        out = extractor.feed(text)
                        if out:
                            yield state.answer_delta(out)
                        continue
                    assert streamer is not None
                    out = streamer.feed(text)
                    if out:
                        yield state.answer_delta(out)
                    if streamer.extractor is not None:
                        extractor = streamer.extractor
                        for event in state.narrate():
                            yield event
                        if streamer.action_text:
                            yield state.answer_delta(streamer.action_text)
                elif isinstance(chunk, FinishChunk):
                    reason = chunk.reason
                    if chunk.usage is not None:
                        state.usage = state.usage + chunk.usage
                elif isinstance(chunk, ThinkingChunk) and full:
                    yield ReasoningDelta(text=chunk.text)
        if extractor is None:  # the stream policy, and no action block while streaming
            assert streamer is not None
            out = streamer.finish()
            if out:
                yield state.answer_delta(out)
            extractor = streamer.extractor  # a block recognized by the final scan, if any
            if extractor is None:
                if streamer.error is None:  # the prose was the answer
                    state.finished(reason)
                    yield _DONE
                    return
                log.log(logging.INFO if self.verbose else logging.DEBUG, "unusable model output: empty")
                messages += [Message.assistant(""), Message.user(invalid_output_message(streamer.error))]
                return
            for event in state.narrate():
                yield event
            if streamer.action_text:
                yield state.answer_delta(streamer.action_text)
        tail = extractor.finish()
        if tail:
            yield state.answer_delta(tail)
        if extractor.is_final:
            state.finished(reason)
            yield _DONE
            return
        raw = streamer.prefix + extractor.raw if streamer is not None else extractor.raw
        if extractor.error is not None or extractor.action is None:
            problem = extractor.error or 'missing "action"'
            log.log(logging.INFO if self.verbose else logging.DEBUG, "unusable model output: %s", problem)
            messages += [Message.assistant(raw), Message.user(invalid_output_message(problem))]
            return
        if final_only:  # the backend ignored the final-only schema: no more tools
            return
        call_id = "call_" + uuid.uuid4().hex[:12]
        async for event in self._call_tool(call_id, extractor.action, extractor.action_input, state):
            yield event
        messages += [Message.assistant(raw), Message.user(tool_response_message(state.steps[-1][2]))]

    # -- one model call, native tool calls ------------------------------------------------

    async def _native_step(
        self, messages: list[Message], mode: StreamMode, state: _RunState, *, final_only: bool
    ) -> AsyncGenerator[Event | object, None]:
        """One model call with native tool calls on offer. With the `stream` policy, text streams
        as answer text until a tool-call fragment arrives; then it is re-labelled as narration
        and the rest of the message's text is reasoning. With `hold`, a message's text is held
        until the message ends without a tool call."""
        offer = bool(self.tools) and not final_only
        stream_text = not offer or state.policy == "stream"
        said = ""  # text of this message streamed as answer text (known once a tool call begins)
        held: list[str] = []  # text of this message not streamed
        calls: dict[int, dict[str, str]] = {}
        full = mode == "full"
        reason: str | None = None
        async with aclosing(
            self.backend.stream(
                messages, tools=[t.spec() for t in self.tools] if offer else None, settings=state.generation
            )
        ) as chunks:
            async for chunk in chunks:
                if type(chunk) is TextChunk:
                    if not chunk.text:
                        continue
                    if stream_text and not calls:
                        yield state.answer_delta(chunk.text)
                    else:
                        held.append(chunk.text)
                elif isinstance(chunk, ToolCallChunk):
                    if not calls and state.parts:  # the message turns into a tool call: narration
                        said = state.answer  # (answer text since the last narration is this message's)
                        for event in state.narrate():
                            yield event
                    parts = calls.setdefault(chunk.index, {"id": "", "name": "", "arguments": ""})
                    parts["id"] = chunk.id or parts["id"]
                    parts["name"] = chunk.name or parts["name"]
                    parts["arguments"] += chunk.arguments
                elif isinstance(chunk, FinishChunk):
                    reason = chunk.reason
                    if chunk.usage is not None:
                        state.usage = state.usage + chunk.usage
                elif isinstance(chunk, ThinkingChunk) and full:
                    yield ReasoningDelta(text=chunk.text)
        if not calls:
            if held:
                yield state.answer_delta("".join(held))
            state.finished(reason)
            yield _DONE
            return
        if held and full:
            yield ReasoningDelta(text="".join(held))
        if final_only:
            return
        tool_calls = tuple(
            ToolCall(id=c["id"] or "call_" + uuid.uuid4().hex[:12], name=c["name"], arguments=c["arguments"])
            for _, c in sorted(calls.items())
        )
        messages.append(Message.assistant(said + "".join(held), tool_calls))
        for call in tool_calls:
            async for event in self._call_tool(call.id, call.name, call.arguments, state):
                yield event
            messages.append(Message(role="tool", content=state.steps[-1][2], tool_call_id=call.id))

    async def _call_tool(
        self, call_id: str, name: str, arguments: Any, state: _RunState
    ) -> AsyncGenerator[Event, None]:
        yield ToolCallStarted(call_id=call_id, name=name, arguments=arguments)
        tool = self._by_name.get(name)
        if tool is None:
            known = ", ".join(t.name for t in self.tools) or "none"
            outcome = ToolOutcome(
                error=f"there is no tool named {name!r} (tools: {known}, or {FINAL_ANSWER})"
            )
        else:
            outcome = await tool.invoke(arguments, timeout_s=self.tool_timeout_s)
        log.log(
            logging.INFO if self.verbose else logging.DEBUG,
            "tool %s(%r) -> %s",
            name,
            arguments,
            outcome.observation,
        )
        state.steps.append((name, arguments, outcome.observation))
        state.record.append(
            {
                "type": "tool",
                "call_id": call_id,
                "name": name,
                "arguments": arguments,
                "result": outcome.result,
                "error": outcome.error,
            }
        )
        yield ToolCallFinished(call_id=call_id, name=name, result=outcome.result, error=outcome.error)


_DONE = object()  # a step's private signal: the final answer has been produced


class _EmbeddedHooks:
    """The run state as the embedded policy sees it (`agent.embedded.RunHooks`)."""

    def __init__(self, agent: Agent, state: _RunState) -> None:
        self.agent, self.state = agent, state

    def answer(self, text: str) -> Event:
        return self.state.answer_delta(text)

    @property
    def generation(self) -> GenerationSettings:
        return self.state.generation

    def add_usage(self, usage: Usage) -> None:
        self.state.usage = self.state.usage + usage

    def finished(self, reason: str | None) -> None:
        self.state.finished(reason)

    def call_tool(self, name: str, arguments: Any) -> AsyncGenerator[Event, None]:
        return self.agent._call_tool("call_" + uuid.uuid4().hex[:12], name, arguments, self.state)


def _join_system(base: str | None, extra: str | None) -> str | None:
    """The agent's system prompt (its default when unset) followed by a run's addition."""
    if not extra:
        return base
    return f"{base or DEFAULT_SYSTEM}\n\n{extra}"
