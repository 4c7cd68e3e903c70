"""A plain model run (no agent) as a stream of events: the tutorial's first step.

`stream_chat` is the whole contract in one place: one `RunStarted`, deltas as they arrive,
then exactly one `RunFinished` or `RunError`. Cancellation (the consumer leaving, or the
task being cancelled) closes the backend's generator, which stops generation.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing

from tokenrelay.backends.base import (
    Backend,
    FinishChunk,
    GenerationSettings,
    TextChunk,
    ThinkingChunk,
)
from tokenrelay.errors import TokenrelayError
from tokenrelay.events import (
    AnswerDelta,
    Event,
    RunError,
    RunFinished,
    RunStarted,
    Timings,
    Usage,
    new_reasoning_delta,
)
from tokenrelay.messages import Message

__all__ = ["new_run_id", "stream_chat"]


def new_run_id() -> str:
    return "run_" + uuid.uuid4().hex[:24]


async def stream_chat(
    backend: Backend,
    messages: Sequence[Message],
    *,
    settings: GenerationSettings = GenerationSettings(),
    run_id: str | None = None,
    session_id: str | None = None,
) -> AsyncIterator[Event]:
    """Stream one model reply to `messages` as events."""
    started = time.perf_counter()
    yield RunStarted(run_id=run_id or new_run_id(), session_id=session_id, model=backend.name)
    parts: list[str] = []
    first_token_s: float | None = None
    usage = Usage()
    finish_reason = "stop"
    try:
        async with aclosing(backend.stream(messages, settings=settings)) as chunks:
            async for chunk in chunks:
                if type(chunk) is TextChunk:
                    if not chunk.text:
                        continue
                    if first_token_s is None:
                        first_token_s = time.perf_counter() - started
                    parts.append(chunk.text)
                    yield AnswerDelta(text=chunk.text)
                elif type(chunk) is ThinkingChunk:
                    yield new_reasoning_delta(chunk.text)
                elif isinstance(chunk, FinishChunk):
                    finish_reason = chunk.reason
                    if chunk.usage is not None:
                        usage = chunk.usage
    except TokenrelayError as exc:
        yield RunError(message=str(exc), code=exc.code, answer="".join(parts))
        return
    timings = Timings(first_token_s=first_token_s, total_s=time.perf_counter() - started)
    yield RunFinished(answer="".join(parts), usage=usage, timings=timings, finish_reason=finish_reason)
