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
from typing import Any, Literal

from tokenrelay.agent.context import agent_messages, plain_messages
from tokenrelay.agent.embedded import embedded_policy
from tokenrelay.agent.json_step import embedded_step, json_step
from tokenrelay.agent.native_step import native_step
from tokenrelay.agent.prompts import FINAL_CALL_MESSAGE, FORCED_STOP_MESSAGE
from tokenrelay.agent.protocol import AgentBase, AnswerPolicy, RunRequest, StreamMode
from tokenrelay.agent.session import SessionTurn
from tokenrelay.agent.state import DONE, RunState, join_system
from tokenrelay.agent.tool_call import call_tool
from tokenrelay.backends.base import Backend, GenerationSettings
from tokenrelay.config import ToolProtocol
from tokenrelay.errors import TokenrelayError
from tokenrelay.events import (
    AnswerDelta,
    Event,
    RunError,
    RunFinished,
    RunStarted,
    Timings,
    Usage,
)
from tokenrelay.memory.base import SessionStore, TurnStatus
from tokenrelay.messages import Message
from tokenrelay.run import new_run_id
from tokenrelay.tools import default_tools
from tokenrelay.tools.registry import Tool, as_tools

__all__ = ["Agent", "AnswerPolicy", "StreamMode", "ToolProtocol"]

log = logging.getLogger("tokenrelay.agent")

Step = Callable[..., AsyncGenerator[Event | object, None]]


class Agent(AgentBase):
    """A conversational agent over any backend. One `Agent` serves many concurrent runs:
    it holds configuration only, and each run keeps its state to itself."""

    #: a run may replace the sampling settings and add to the system prompt
    accepts = frozenset({"generation", "system", "new_session"})

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

    @property
    def name(self) -> str:
        """The backend's model name (what `RunStarted.model` reports)."""
        return self.backend.name

    # -- the run -----------------------------------------------------------------------

    async def stream(self, request: RunRequest) -> AsyncGenerator[Event, None]:
        """Answer `request.text`, continuing `request.session_id`'s conversation when a store is
        set (see `RunRequest` for the other fields; `run(text, **options)` builds one)."""
        text, session_id = request.text, request.session_id
        run_id = request.run_id or new_run_id()
        state = RunState(
            policy=request.answer_policy or self.answer_policy,
            generation=self.generation if request.generation is None else request.generation,
            system_prompt=join_system(self.system_prompt, request.system),
        )
        yield RunStarted(run_id=run_id, session_id=session_id, model=self.backend.name)
        turn = SessionTurn(
            self.store,
            session_id,
            run_id=run_id,
            memory_k=self.memory_k,
            checkpoint_s=self.checkpoint_s,
            create=request.new_session,
            owner=request.owner,
        )
        status: TurnStatus = "interrupted"
        error: str | None = None
        failure: RunError | None = None  # yielded after the turn is stored, like RunFinished
        try:
            await turn.open(text)
            recording = turn.recording
            async with aclosing(self._loop(request, turn, state)) as events:
                async for event in events:
                    yield event
                    if recording and type(event) is AnswerDelta and time.monotonic() >= turn.checkpoint_at:
                        await turn.checkpoint(state.answer)  # a crash loses at most `checkpoint_s`
            status = "complete"
        except TokenrelayError as exc:
            status, error = "failed", str(exc)
            log.info("run %s failed: %s", run_id, exc)
            failure = RunError(message=str(exc), code=exc.code, answer=state.answer)
        except Exception as exc:  # a bug must still end the stream with an error event
            status, error = "failed", f"internal error: {type(exc).__name__}"
            log.exception("run %s crashed", run_id)
            failure = RunError(message=error, code="internal", answer=state.answer)
        finally:
            await turn.finish(
                status,
                state.answer,
                error=error,
                finish_reason=state.finish_reason if status == "complete" else None,
                steps=state.record,
            )
        if failure is not None:
            yield failure
        elif status == "complete":
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
        self, request: RunRequest, turn: SessionTurn, state: RunState
    ) -> AsyncGenerator[Event, None]:
        text, mode, given = request.text, request.mode, request.history
        if self._embedded is not None:
            plain = plain_messages(text, given, turn.pairs, turn.document, state.system_prompt)
            forced = self.max_iterations < 2 and self.early_stopping_method == "force"
            async with aclosing(
                self._embedded.run(
                    plain,
                    text,
                    turn.document,
                    mode,
                    _EmbeddedHooks(self, state),
                    forced_stop=FORCED_STOP_MESSAGE if forced else None,
                )
            ) as embedded_events:
                async for embedded_event in embedded_events:
                    yield embedded_event
            return
        messages = agent_messages(
            self.tool_protocol, self.tools, text, given, turn.pairs, turn.document, state.system_prompt
        )
        if self.tool_protocol == "json" and self.plain_final_answer:
            state.plain = plain_messages(text, given, turn.pairs, turn.document, state.system_prompt)
        step: Step = json_step
        if self.tool_protocol == "native":
            step = native_step
        elif state.plain:
            step = embedded_step
        for iteration in range(self.max_iterations):
            done = False
            async with aclosing(step(self, messages, mode, state, final_only=False)) as events:
                async for event in events:
                    if event is DONE:
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
        async with aclosing(step(self, messages, mode, state, final_only=True)) as events:
            async for event in events:
                if event is not DONE:
                    yield event  # type: ignore[misc]
        if not state.parts:
            yield state.answer_delta(FORCED_STOP_MESSAGE)


class _EmbeddedHooks:
    """The run state as the embedded policy sees it (`agent.embedded.RunHooks`)."""

    def __init__(self, agent: Agent, state: RunState) -> None:
        self.agent, self.state = agent, state

    def answer_delta(self, text: str) -> Event:
        return self.state.answer_delta(text)

    @property
    def generation(self) -> GenerationSettings:
        return self.state.generation

    def add_usage(self, usage: Usage) -> None:
        self.state.add_usage(usage)

    def finished(self, reason: str | None) -> None:
        self.state.finished(reason)

    def call_tool(self, name: str, arguments: Any) -> AsyncGenerator[Event, None]:
        return call_tool(self.agent, "call_" + uuid.uuid4().hex[:12], name, arguments, self.state)
