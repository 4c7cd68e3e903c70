"""What one run of the agent has produced so far (`RunState`), and the answer-writing loop.

A `RunState` belongs to one run: the answer text streamed (the partial answer survives any
failure), usage, the tool steps, the narration record for the stored turn, and this run's
effective settings. `stream_answer` is the loop of a plain answer-writing model call, for the
agent's plain final answer and the embedded policy alike.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, Protocol

from tokenrelay.agent.prompts import DEFAULT_SYSTEM
from tokenrelay.agent.protocol import AnswerPolicy
from tokenrelay.backends.base import FinishChunk, GenerationSettings, ModelChunk, TextChunk
from tokenrelay.events import AnswerDelta, Event, Narration, Usage, new_answer_delta
from tokenrelay.memory.base import Step
from tokenrelay.messages import Message

__all__ = ["DONE", "AnswerSink", "RunState", "join_system", "stream_answer"]

#: a step's private signal to the loop: the final answer has been produced
DONE = object()


@dataclass
class RunState:
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

    def add_usage(self, usage: Usage) -> None:
        self.usage = self.usage + usage

    def call_ended(self, chunk: FinishChunk) -> str | None:
        """A model call's `FinishChunk`: count its usage; return why the call stopped."""
        if chunk.usage is not None:
            self.usage = self.usage + chunk.usage
        return chunk.reason

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


class AnswerSink(Protocol):
    """Where a plain answer-writing call's text, usage and stop reason go (a `RunState`, or the
    embedded policy's hooks)."""

    def answer_delta(self, text: str) -> Event: ...

    def add_usage(self, usage: Usage) -> None: ...

    def finished(self, reason: str | None) -> None: ...


async def stream_answer(
    chunks: AsyncGenerator[ModelChunk, None], sink: AnswerSink
) -> AsyncGenerator[Event, None]:
    """Every text chunk of a plain model call as answer text; usage and why it stopped to `sink`.
    Owns `chunks` (closes them), so a caller returns this generator as its own: the per-token
    chain is this one generator over the backend's."""
    async with aclosing(chunks):
        async for chunk in chunks:
            if type(chunk) is TextChunk:
                if chunk.text:
                    yield sink.answer_delta(chunk.text)
            elif isinstance(chunk, FinishChunk):
                sink.finished(chunk.reason)
                if chunk.usage is not None:
                    sink.add_usage(chunk.usage)


def join_system(base: str | None, extra: str | None) -> str | None:
    """The agent's system prompt (its default when unset) followed by a run's addition."""
    if not extra:
        return base
    return f"{base or DEFAULT_SYSTEM}\n\n{extra}"
