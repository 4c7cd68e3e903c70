"""The runs of this process, by id: each run is a channel that responses follow, produced by a
`RunDriver` (in a task of its own, or inline by the response that follows it).

Decoupling the run from the HTTP response gives cancel-by-id (from any request), a clean
error event instead of a broken stream when a run is cancelled, and cheap coalescing: a
follower that falls behind takes every queued event in one batch.

Invariants:
* a run whose last follower leaves (client disconnect) is cancelled by that follower, unless
  it was started detached: then it gets `grace_s` to be resumed (runs/grace.py);
* finished runs are forgotten after `retention_s`, and beyond the newest `max_finished`;
* a run that reaches `max_events` events is stopped (`too_large`): with a backend that ignores
  max_tokens, that is the only bound on its buffer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from tokenrelay.events import Event
from tokenrelay.runs.channel import RunChannel
from tokenrelay.runs.driver import RunDriver

__all__ = ["RunRegistry"]


class RunRegistry:
    """The runs of this process, by id."""

    def __init__(
        self,
        retention_s: float = 300.0,
        *,
        max_events: int = 100_000,
        max_finished: int = 1000,
        grace_s: float | None = 30.0,
    ) -> None:
        self._runs: dict[str, RunChannel] = {}
        self.retention_s = retention_s
        #: a run with this many events is stopped with a `too_large` error
        self.max_events = max_events
        #: finished runs kept for resume: the newest this many (+25% between sweeps)
        self.max_finished = max_finished
        self._sweep_at = max_finished
        #: a detached run nobody follows is cancelled after this many seconds (None: never)
        self.grace_s = grace_s
        #: "is anyone following run `run_id` elsewhere?" (another worker), asked before a grace cancel
        self.followed_elsewhere: Callable[[str], Awaitable[bool]] | None = None
        self._last_sweep = time.monotonic()
        #: called with each new channel (e.g. to mirror its events to Redis)
        self.on_start: Callable[[RunChannel], object] | None = None

    def __len__(self) -> int:
        return len(self._runs)

    def start(
        self,
        run_id: str,
        events: AsyncIterator[Event],
        *,
        owner: str | None,
        session_id: str | None,
        detached: bool = False,
        inline: bool = False,
    ) -> RunChannel:
        """Register a run. By default it runs as a task of its own; `inline` leaves `events`
        on the channel for the response that follows it to drive, saving a task wake-up per
        event (for runs that end with their connection anyway)."""
        self._sweep()
        channel = RunChannel(
            run_id,
            owner=owner,
            session_id=session_id,
            detached=detached,
            max_events=self.max_events,
            grace_s=self.grace_s,
            followed_elsewhere=self.followed_elsewhere,
        )
        if inline:
            channel.offer(events)
        else:
            driver = RunDriver(channel, events)
            channel.bind_task(asyncio.create_task(driver.run(), name=f"run {run_id}"))
        self._runs[run_id] = channel
        if self.on_start is not None:
            self.on_start(channel)
        return channel

    def cancel_local(self, run_id: str) -> bool:
        """Cancel a run of this process whoever owns it (the owner was checked upstream)."""
        channel = self._runs.get(run_id)
        return channel.cancel() if channel is not None else False

    def get(self, run_id: str, *, owner: str | None) -> RunChannel | None:
        channel = self._runs.get(run_id)
        if channel is None or channel.owner != owner:
            return None
        return channel

    def active_count(self) -> int:
        return sum(1 for c in self._runs.values() if not c.done)

    def active(self, *, owner: str | None = None) -> list[RunChannel]:
        return [c for c in self._runs.values() if not c.done and c.owner == owner]

    def _sweep(self) -> None:
        """Forget finished runs older than `retention_s`, and all but the newest `max_finished`
        (a burst of short runs must not keep all their events for minutes). Runs every 5 s, or
        sooner once `max_finished // 4` runs more are registered: O(1) amortized per run."""
        now = time.monotonic()
        if now - self._last_sweep < 5.0 and len(self._runs) <= self._sweep_at:
            return
        self._last_sweep = now
        finished = sorted((c.finished_at or 0.0, run_id) for run_id, c in self._runs.items() if c.done)
        excess = len(finished) - self.max_finished
        for i, (finished_at, run_id) in enumerate(finished):
            if i < excess or now - finished_at > self.retention_s:
                del self._runs[run_id]
        self._sweep_at = len(self._runs) + max(self.max_finished // 4, 16)

    async def keepalive(self, interval_s: float) -> None:
        """Every `interval_s`, wake idle followers to send a keep-alive: one timer for the
        whole process instead of one per token."""
        while True:
            await asyncio.sleep(interval_s)
            for channel in list(self._runs.values()):
                if not channel.done:
                    channel.tick()
            self._sweep()

    async def shutdown(self) -> None:
        tasks = [c.task for c in self._runs.values() if c.task is not None and not c.task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
