"""Test doubles and checks shipped with the library: a scripted model backend, a stream checker.

`ScriptedBackend` replays prepared replies, chunk by chunk, optionally at a fixed rate, so
tests and benchmarks are deterministic. It is public so users can test code built on
tokenrelay without a model. It is never selected by default: only by passing it explicitly
or with the model string `scripted:<text>` (which answers every call with `<text>`).

`check_events` asserts the invariants of `tokenrelay.events` on a run's events; `final_answer`
and `shown_text` are what a typed consumer and a consumer that ignores `Narration` show.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field

from tokenrelay.backends.base import (
    Backend,
    FinishChunk,
    GenerationSettings,
    ModelChunk,
    TextChunk,
    ToolCallChunk,
)
from tokenrelay.config import Settings
from tokenrelay.errors import BackendError
from tokenrelay.events import (
    AnswerDelta,
    Event,
    Narration,
    RunError,
    RunFinished,
    RunStarted,
    ToolCallFinished,
    ToolCallStarted,
    Usage,
    final_answer,
)
from tokenrelay.messages import Message, ToolSpec

__all__ = [
    "Reply",
    "ScriptedBackend",
    "ScriptedCall",
    "scripted_backend",
    "check_events",
    "final_answer",
    "shown_text",
    "split_tokens",
]


def shown_text(events: Sequence[Event]) -> str:
    """Every answer delta's text: what a consumer that ignores `Narration` shows."""
    return "".join([e.text for e in events if type(e) is AnswerDelta])


def _check_narration(events: Sequence[Event]) -> None:
    since: list[str] = []  # answer text since the previous narration
    for event in events:
        if type(event) is AnswerDelta:
            since.append(event.text)
        elif type(event) is Narration:
            assert "".join(since).endswith(event.text), "a Narration re-labels the end of the answer text"
            since = []


def check_events(events: Sequence[Event], *, complete: bool = True) -> None:
    """Assert the invariants of a run's event stream (of a prefix of one if not `complete`):
    one `RunStarted` first; exactly one terminal event, last; the terminal event's answer is
    the answer text with narration re-labelled; every `Narration` re-labels the end of the
    answer text since the previous one; tool calls are bracketed, one at a time."""
    assert events and isinstance(events[0], RunStarted), "a run starts with RunStarted"
    assert sum(isinstance(e, RunStarted) for e in events) == 1
    terminal = [i for i, e in enumerate(events) if isinstance(e, RunFinished | RunError)]
    if complete:
        assert terminal == [len(events) - 1], "exactly one terminal event, and nothing after it"
        last = events[-1]
        assert isinstance(last, RunFinished | RunError)
        assert last.answer == final_answer(events)
    else:
        assert terminal == []
    _check_narration(events)
    open_call: str | None = None
    for e in events:
        if isinstance(e, ToolCallStarted):
            assert open_call is None, "one tool call at a time"
            open_call = e.call_id
        elif isinstance(e, ToolCallFinished):
            assert e.call_id == open_call
            assert (e.result is None) != (e.error is None)
            open_call = None
        else:
            assert open_call is None, f"{e.type} inside a tool call"


#: One model call's reply: text (split with `split_tokens`), or explicit chunks/strings.
Reply = str | Sequence[str | ModelChunk]


def split_tokens(text: str, size: int = 4) -> list[str]:
    """Split text into pieces of `size` characters: a stand-in for a tokenizer."""
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


@dataclass
class ScriptedCall:
    """What one `stream` call received and did: for assertions in tests."""

    messages: list[Message]
    tools: list[ToolSpec]
    settings: GenerationSettings
    chunks_sent: int = 0
    finished: bool = False
    #: True when the consumer stopped iterating (or was cancelled) before the end
    abandoned: bool = False


@dataclass
class ScriptedBackend(Backend):
    """Replays `replies` in order, one per model call (the last one repeats).

    `replies` may also be a function of the messages, for replies that depend on the prompt
    (e.g. echoing it, to test isolation between concurrent runs). `tokens_per_second`
    paces chunks on an absolute schedule (no drift); `fail_after` raises a `BackendError`
    after that many chunks of every reply, to inject mid-stream failures.
    """

    replies: Sequence[Reply] | Callable[[Sequence[Message]], Reply] = ("Hello!",)
    tokens_per_second: float | None = None
    fail_after: int | None = None
    failure_message: str = "scripted backend failure"
    native_tools: bool = False
    token_size: int = 4
    name: str = "scripted"
    calls: list[ScriptedCall] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.supports_native_tools = self.native_tools

    def _reply_for(self, messages: Sequence[Message]) -> Reply:
        if callable(self.replies):
            return self.replies(messages)
        index = min(len(self.calls) - 1, len(self.replies) - 1)
        return self.replies[index]

    async def stream(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[ToolSpec] | None = None,
        settings: GenerationSettings = GenerationSettings(),
    ) -> AsyncGenerator[ModelChunk, None]:
        call = ScriptedCall(list(messages), list(tools or ()), settings)
        self.calls.append(call)
        reply = self._reply_for(messages)
        pieces = split_tokens(reply, self.token_size) if isinstance(reply, str) else list(reply)
        interval = 1.0 / self.tokens_per_second if self.tokens_per_second else 0.0
        start = time.monotonic()
        saw_tool_call = False
        scripted_finish: FinishChunk | None = None
        try:
            for i, piece in enumerate(pieces):
                if self.fail_after is not None and i >= self.fail_after:
                    raise BackendError(self.failure_message)
                if interval:
                    delay = start + i * interval - time.monotonic()
                    await asyncio.sleep(delay if delay > 0 else 0)
                chunk = TextChunk(piece) if isinstance(piece, str) else piece
                if isinstance(chunk, FinishChunk):
                    scripted_finish = chunk
                    break
                saw_tool_call = saw_tool_call or isinstance(chunk, ToolCallChunk)
                call.chunks_sent += 1
                yield chunk
            if self.fail_after is not None and self.fail_after >= len(pieces):
                raise BackendError(self.failure_message)
            call.finished = True
            prompt_tokens = sum(len(m.content) for m in messages) // self.token_size
            usage = Usage(prompt_tokens=prompt_tokens, completion_tokens=call.chunks_sent)
            if scripted_finish is not None:
                yield FinishChunk(scripted_finish.reason, scripted_finish.usage or usage)
            else:
                yield FinishChunk("tool_calls" if saw_tool_call else "stop", usage)
        finally:
            if not call.finished:
                call.abandoned = True


def scripted_backend(arg: str, settings: Settings) -> Backend:
    """The `scripted:<text>` plug-in (entry point `tokenrelay.backends: scripted`): answers
    every call with `<text>` ("Hello!" when empty)."""
    return ScriptedBackend(replies=[arg or "Hello!"])
