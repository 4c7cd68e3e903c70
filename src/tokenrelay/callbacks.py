"""Callback handlers in the tutorial's shape, fed from the event stream.

The tutorial attaches `callbacks=[handler]` to a shared LLM object, so concurrent requests
feed each other's handlers. Here a handler is given to one run (`run_callbacks(events,
handlers)`), so it only ever sees that run's events. Hooks may be plain or `async def`.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import AsyncIterable, Sequence
from typing import Any, TextIO

from tokenrelay.events import (
    AnswerDelta,
    Narration,
    ReasoningDelta,
    RunError,
    RunFinished,
    RunStarted,
    ToolCallFinished,
    ToolCallStarted,
)

__all__ = ["CallbackHandler", "StreamingStdOutCallbackHandler", "run_callbacks"]


class CallbackHandler:
    """Override the hooks you need; every hook defaults to doing nothing."""

    def on_llm_start(self, run_id: str, model: str) -> Any:
        pass

    def on_llm_new_token(self, token: str) -> Any:
        """Called with each piece of answer text, in order."""

    def on_reasoning_token(self, token: str) -> Any:
        pass

    def on_narration(self, text: str) -> Any:
        """The trailing `text` of the tokens already given to `on_llm_new_token` was the model
        speaking before a tool call, not the final answer (see `tokenrelay.events.Narration`)."""

    def on_tool_start(self, name: str, arguments: Any) -> Any:
        pass

    def on_tool_end(self, name: str, result: str | None, error: str | None) -> Any:
        pass

    def on_llm_end(self, answer: str, event: RunFinished) -> Any:
        pass

    def on_llm_error(self, message: str, event: RunError) -> Any:
        pass


class StreamingStdOutCallbackHandler(CallbackHandler):
    """Writes answer text to a stream (stdout by default) as it arrives, flushing each
    token, and a newline at the end. Errors go to stderr, never into the answer."""

    def __init__(self, stream: TextIO | None = None, *, errors: TextIO | None = None) -> None:
        self._stream = stream
        self._errors = errors

    def on_llm_new_token(self, token: str) -> None:
        out = self._stream or sys.stdout
        out.write(token)
        out.flush()

    def on_llm_end(self, answer: str, event: RunFinished) -> None:
        out = self._stream or sys.stdout
        out.write("\n")
        out.flush()

    def on_llm_error(self, message: str, event: RunError) -> None:
        out = self._stream or sys.stdout
        if event.answer:
            out.write("\n")
            out.flush()
        print(f"error: {message}", file=self._errors or sys.stderr)


async def _call(result: Any) -> None:
    if inspect.isawaitable(result):
        await result


async def run_callbacks(
    events: AsyncIterable[Any], handlers: Sequence[CallbackHandler]
) -> RunFinished | RunError | None:
    """Drive `handlers` from one run's events; return the terminal event."""
    terminal: RunFinished | RunError | None = None
    async for event in events:
        for handler in handlers:
            if isinstance(event, AnswerDelta):
                await _call(handler.on_llm_new_token(event.text))
            elif isinstance(event, ReasoningDelta):
                await _call(handler.on_reasoning_token(event.text))
            elif isinstance(event, Narration):
                await _call(handler.on_narration(event.text))
            elif isinstance(event, RunStarted):
                await _call(handler.on_llm_start(event.run_id, event.model))
            elif isinstance(event, ToolCallStarted):
                await _call(handler.on_tool_start(event.name, event.arguments))
            elif isinstance(event, ToolCallFinished):
                await _call(handler.on_tool_end(event.name, event.result, event.error))
            elif isinstance(event, RunFinished):
                await _call(handler.on_llm_end(event.answer, event))
            elif isinstance(event, RunError):
                await _call(handler.on_llm_error(event.message, event))
        if isinstance(event, RunFinished | RunError):
            terminal = event
    return terminal
