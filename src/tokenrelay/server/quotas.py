"""Per-key limits: runs in flight, sessions stored, requests per minute. Over a limit the
answer is 429 with `Retry-After` and the usual JSON error body (`type`: `rate_limit_error`,
`code`: `too_many_runs`, `too_many_sessions` or `rate_limited`).

They apply only with API keys (a server without keys has one user). 0 turns a limit off.

Several workers: with Redis the counts are shared where that costs one round trip —
requests per minute are one `INCR` per request on a per-key, per-minute counter; runs in flight
are a per-key hash (run id -> worker) updated by one Lua script that also drops the entries of
dead workers, and emptied as runs end (by the run's log writer). Sessions are counted in the
database, which the workers share anyway. Without Redis each count is this process's own.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from tokenrelay.config import Settings
from tokenrelay.memory.base import SessionStore
from tokenrelay.runs import RunRegistry
from tokenrelay.server.errors import error_response

if TYPE_CHECKING:
    from tokenrelay.runs.redis import RedisCoordinator

__all__ = ["QuotaExceeded", "Quotas", "install_quota_errors", "quota_response", "quotas_of"]

T = TypeVar("T")
log = logging.getLogger("tokenrelay.server")


class QuotaExceeded(Exception):
    def __init__(self, code: str, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s


def install_quota_errors(app: FastAPI) -> None:
    @app.exception_handler(QuotaExceeded)
    async def quota_error(request: Request, exc: QuotaExceeded) -> JSONResponse:
        return quota_response(exc)


def quota_response(exc: QuotaExceeded) -> JSONResponse:
    retry_after = str(max(1, math.ceil(exc.retry_after_s)))
    return error_response(
        exc.message, 429, type_="rate_limit_error", code=exc.code, headers={"Retry-After": retry_after}
    )


class Quotas:
    def __init__(
        self,
        settings: Settings,
        registry: RunRegistry,
        store: SessionStore,
        coordinator: RedisCoordinator | None = None,
    ) -> None:
        self.on = bool(settings.api_keys)
        self.max_runs = settings.max_runs_per_key
        self.max_sessions = settings.max_sessions_per_key
        self.per_minute = settings.requests_per_minute_per_key
        self.registry = registry
        self.store = store
        self.coordinator = coordinator
        self._windows: dict[str, tuple[int, int]] = {}  # owner -> (minute, requests)
        self._reserved: dict[str, set[str]] = {}  # owner -> runs claimed, not yet registered

    async def count_request(self, owner: str | None) -> None:
        """One request of `owner`; raises `QuotaExceeded` past the per-minute limit."""
        if not self.on or owner is None or not self.per_minute:
            return
        now = time.time()
        minute = int(now // 60)
        count = (
            await self._shared(self.coordinator.count_request(owner, minute)) if self.coordinator else None
        )
        if count is None:  # no Redis, or Redis is away: this worker's own count
            last, count = self._windows.get(owner, (minute, 0))
            count = count + 1 if last == minute else 1
            self._windows[owner] = (minute, count)
            if len(self._windows) > 10_000:  # forget other minutes' windows
                self._windows = {k: v for k, v in self._windows.items() if v[0] == minute}
        if count > self.per_minute:
            raise QuotaExceeded(
                "rate_limited",
                f"this API key made more than {self.per_minute} requests this minute",
                (minute + 1) * 60 - now,
            )

    async def claim_run(self, owner: str | None, run_id: str) -> None:
        """Count a run of `owner` about to start; raises `QuotaExceeded` when it has
        `max_runs_per_key` in flight. With Redis the run is released as it ends."""
        if not self.on or owner is None or not self.max_runs:
            return
        allowed = (
            await self._shared(self.coordinator.claim_run(owner, run_id, self.max_runs))
            if self.coordinator
            else None
        )
        if allowed is None:  # no Redis, or Redis is away: this worker's own count
            # runs registered, plus those claimed and not yet registered (their requests are
            # still looking up the session): checked and reserved with no await in between
            reserved = self._reserved.setdefault(owner, set())
            allowed = len(self.registry.active(owner=owner)) + len(reserved) < self.max_runs
            if allowed:
                reserved.add(run_id)
        if not allowed:
            raise QuotaExceeded(
                "too_many_runs",
                f"this API key has {self.max_runs} answers in progress; wait for one to finish",
                1.0,
            )

    def started(self, owner: str | None, run_id: str) -> None:
        """The claimed run is registered: from now on the registry counts it."""
        if owner is not None:
            self._unreserve(owner, run_id)

    async def release_run(self, owner: str | None, run_id: str) -> None:
        """Undo `claim_run` for a run that did not start."""
        if owner is None:
            return
        self._unreserve(owner, run_id)
        if self.on and self.max_runs and self.coordinator is not None:
            await self._shared(self.coordinator.release_run(owner, run_id))

    def _unreserve(self, owner: str, run_id: str) -> None:
        reserved = self._reserved.get(owner)
        if reserved is not None:
            reserved.discard(run_id)
            if not reserved:
                del self._reserved[owner]

    async def _shared(self, call: Awaitable[T]) -> T | None:
        """A shared count through Redis, or None when Redis fails (then the limits fall back
        to this worker's own counts rather than refusing everything)."""
        try:
            return await call
        except Exception as exc:
            log.warning("per-key limits: Redis failed (%s); counting in this worker only", exc)
            return None

    async def claim_session(self, owner: str | None) -> None:
        """Raises `QuotaExceeded` when `owner` already has `max_sessions_per_key` sessions."""
        if not self.on or owner is None or not self.max_sessions:
            return
        if await self.store.count_sessions(owner=owner) >= self.max_sessions:
            raise QuotaExceeded(
                "too_many_sessions",
                f"this API key has {self.max_sessions} sessions, the most it may keep; delete some first",
                60.0,
            )


def quotas_of(app: Any) -> Quotas | None:
    """The app's `Quotas` (None before its lifespan started, or for another app)."""
    state = getattr(app, "state", None)
    quotas: Quotas | None = getattr(state, "quotas", None)
    return quotas
