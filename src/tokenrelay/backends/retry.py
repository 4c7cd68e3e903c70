"""Retrying a model call that failed before its first chunk (tenacity): exponential backoff
with full jitter, at least the server's Retry-After, bounded in attempts and in total time.

Invariants:

* only a `BackendError` whose `retryable` flag is set is retried (429, 5xx, connection
  failures, a stream that broke or timed out before its first chunk); anything else (400,
  401, 404, a bug, cancellation) is raised at once;
* a call that has yielded a chunk is never retried: the consumer has seen part of an answer,
  and another attempt would repeat it or splice two answers together;
* the wait before another attempt is the larger of the server's Retry-After and a random time
  in [0, min(max_backoff_s, initial_s * 2**(n-1))] after the n-th failure; no attempt starts
  later than `max_total_s` after the first one did, and there are at most `attempts`; when
  they are spent, the last error is raised with how many attempts were made;
* waiting is an `asyncio.sleep`: cancelling the run cancels the wait at once.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
    wait_random_exponential,
)

from tokenrelay.errors import BackendError, ConfigError

__all__ = ["NO_RETRY", "RetryPolicy", "retrying_stream"]

log = logging.getLogger("tokenrelay.backends")

T = TypeVar("T")


@dataclass(frozen=True, kw_only=True, slots=True)
class RetryPolicy:
    """How a model call that failed before its first chunk is tried again."""

    #: tries in all, the first included (1: never retry)
    attempts: int = 3
    #: no attempt starts later than this after the first one started
    max_total_s: float = 20.0
    #: the first backoff window; it doubles after every failure, up to `max_backoff_s`
    initial_s: float = 0.5
    max_backoff_s: float = 8.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ConfigError(f"retry attempts must be at least 1, not {self.attempts}")
        for name in ("max_total_s", "initial_s", "max_backoff_s"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"retry {name} must be 0 or more, not {getattr(self, name)!r}")


NO_RETRY = RetryPolicy(attempts=1)


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, BackendError) and exc.retryable


class _Wait:
    """Full-jitter exponential backoff, but never less than the server's Retry-After."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.backoff = wait_random_exponential(multiplier=policy.initial_s, max=policy.max_backoff_s)

    def __call__(self, state: RetryCallState) -> float:
        wait = self.backoff(state)
        exc = state.outcome.exception() if state.outcome is not None else None
        after = getattr(exc, "retry_after_s", None)
        return max(wait, after) if after is not None else wait


def retrying_stream(
    open_stream: Callable[[], AsyncGenerator[T, None]], policy: RetryPolicy, *, where: str = "the server"
) -> AsyncGenerator[T, None]:
    """The chunks of `open_stream()`, opened again (per `policy`) while it fails before its
    first chunk. `where` names the upstream in log lines. With one attempt allowed this is
    `open_stream()` itself: no retry layer, one generator less per chunk."""
    if policy.attempts <= 1:
        return open_stream()
    return _retrying(open_stream, policy, where)


async def _retrying(
    open_stream: Callable[[], AsyncGenerator[T, None]], policy: RetryPolicy, where: str
) -> AsyncGenerator[T, None]:
    def give_up(state: RetryCallState) -> None:
        assert state.outcome is not None
        exc = state.outcome.exception()
        assert isinstance(exc, BackendError)
        after = exc.retry_after_s
        tries = state.attempt_number
        note = f"{tries} attempt{'s' if tries > 1 else ''}"
        if after is not None and (state.seconds_since_start or 0.0) + after >= policy.max_total_s:
            budget = policy.max_total_s
            note += f"; the server asked to retry after {after:g} s, past the {budget:g} s retry budget"
        raise BackendError(
            f"{exc} ({note})", status=exc.status, retryable=exc.retryable, retry_after_s=after
        ) from None

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        status = getattr(exc, "status", None)
        log.info(  # not a warning: the CLI's stderr carries one line per error, and this is not one
            "model call to %s failed before its first token (%s); attempt %d of %d in %.2f s",
            where,
            f"HTTP {status}" if status else "no response",
            state.attempt_number + 1,
            policy.attempts,
            state.upcoming_sleep,
        )

    retrying = AsyncRetrying(
        stop=stop_after_attempt(policy.attempts) | stop_before_delay(policy.max_total_s),
        wait=_Wait(policy),
        retry=retry_if_exception(_retryable),
        retry_error_callback=give_up,
        before_sleep=before_sleep,
        reraise=True,
    )
    chunks: AsyncGenerator[T, None] | None = None
    first: T | None = None
    async for attempt in retrying:
        with attempt:
            candidate = open_stream()
            try:
                first = await anext(candidate)
            except StopAsyncIteration:
                return
            except BaseException:
                await candidate.aclose()
                raise
            chunks = candidate
    assert chunks is not None
    async with aclosing(chunks):
        yield first  # type: ignore[misc]  # set with `chunks`
        async for chunk in chunks:
            yield chunk
