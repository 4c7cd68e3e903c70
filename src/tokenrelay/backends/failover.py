"""Several upstream servers behind one backend: health-aware round robin, failover before
the first token.

Each call starts at the next upstream in turn, skipping those that failed recently (a
failure puts an upstream in cooldown; when every upstream is cooling down, all are tried
anyway). A call that fails before its first chunk moves on to the next upstream; once a
chunk has been yielded the call is committed to that upstream and a later failure is raised
as is — two models' answers are never spliced together.

Retries (`retry`, backends/retry.py) wrap whole rounds: when every upstream failed before its
first chunk and one of the failures was retryable, the round is tried again after a backoff
(at least the shortest Retry-After). Build the upstreams with `retry=NO_RETRY` (the model
string factory does): a failing upstream is then left for the next at once, not hammered.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing

from tokenrelay.backends.base import Backend, GenerationSettings, ModelChunk
from tokenrelay.backends.retry import RetryPolicy, retrying_stream
from tokenrelay.errors import BackendError
from tokenrelay.messages import Message, ToolSpec

__all__ = ["FailoverBackend"]


class FailoverBackend(Backend):
    def __init__(
        self,
        upstreams: Sequence[Backend],
        *,
        cooldown_s: float = 10.0,
        name: str | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        if not upstreams:
            raise ValueError("FailoverBackend needs at least one upstream")
        self.upstreams = list(upstreams)
        self.cooldown_s = cooldown_s
        self.retry = RetryPolicy() if retry is None else retry
        self.name = name or self.upstreams[0].name
        self.supports_native_tools = all(u.supports_native_tools for u in self.upstreams)
        self.enforces_json_schema = all(u.enforces_json_schema for u in self.upstreams)
        windows = [u.context_window for u in self.upstreams if u.context_window]
        self.context_window = min(windows) if windows else None
        self._next = 0
        self._down_until = [0.0] * len(self.upstreams)

    def order(self) -> list[int]:
        """Upstream indexes to try for the next call: healthy ones in turn, then the rest."""
        n = len(self.upstreams)
        start = self._next
        self._next = (self._next + 1) % n
        rotation = [(start + i) % n for i in range(n)]
        now = time.monotonic()
        healthy = [i for i in rotation if self._down_until[i] <= now]
        return healthy + [i for i in rotation if i not in healthy]

    def healthy(self) -> list[bool]:
        now = time.monotonic()
        return [until <= now for until in self._down_until]

    def stream(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[ToolSpec] | None = None,
        settings: GenerationSettings = GenerationSettings(),
    ) -> AsyncGenerator[ModelChunk, None]:
        return retrying_stream(lambda: self._round(messages, tools, settings), self.retry, where=self.name)

    async def _round(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec] | None, settings: GenerationSettings
    ) -> AsyncGenerator[ModelChunk, None]:
        """One try of every upstream in turn, until one yields its first chunk."""
        failures: list[str] = []
        retryable = False
        waits: list[float] = []
        for index in self.order():
            upstream = self.upstreams[index]
            async with aclosing(upstream.stream(messages, tools=tools, settings=settings)) as chunks:
                try:
                    first = await anext(chunks)
                except StopAsyncIteration:
                    return
                except BackendError as exc:
                    if exc.status in (400, 413, 422):  # the request is bad, not the upstream
                        raise
                    self._down_until[index] = time.monotonic() + self.cooldown_s
                    where = getattr(upstream, "shown_url", upstream.name)
                    failures.append(f"{where}: {exc}")
                    retryable = retryable or exc.retryable
                    if exc.retry_after_s is not None:
                        waits.append(exc.retry_after_s)
                    continue
                self._down_until[index] = 0.0
                yield first
                async for chunk in chunks:  # committed: errors from here on are the caller's
                    yield chunk
                return
        raise BackendError(
            "every upstream failed: " + "; ".join(failures),
            retryable=retryable,
            retry_after_s=min(waits) if waits else None,  # the first to be ready again
        )

    async def aclose(self) -> None:
        for upstream in self.upstreams:
            await upstream.aclose()
