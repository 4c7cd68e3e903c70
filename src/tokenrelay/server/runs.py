"""Runs in flight: each run is a task that appends its events to a channel; responses follow it.

Decoupling the run from the HTTP response gives cancel-by-id (from any request), a clean
error event instead of a broken stream when a run is cancelled, and cheap coalescing: a
follower that falls behind takes every queued event in one batch.

Invariants:
* a channel's events are append-only and end with exactly one terminal event;
* followers read `events` by index and wait with `next_event`: every event from where they
  start, in order, each once; they never block the producer (a run's output is bounded by
  max_tokens per model call and max_iterations, so the buffer is bounded too);
* a run whose last follower leaves (client disconnect) is cancelled, unless it was started
  detached; the agent then records the turn as interrupted with its partial answer. A
  detached (resumable) run whose last follower leaves waits `grace_s` for a client to resume
  it (a page reload, a dropped connection), then is cancelled the same way: a closed tab
  never keeps the model running;
* finished runs are forgotten after `retention_s`, and beyond the newest `max_finished`;
* a run that reaches `max_events` events is stopped (`too_large`): with a backend that ignores
  max_tokens, that is the only bound on its buffer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from array import array
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, cast, overload

from tokenrelay.events import AnswerDelta, Event, RunError, RunFinished, new_answer_delta

__all__ = ["RunChannel", "RunRegistry"]


_TERMINAL = (RunFinished, RunError)
_background: set[asyncio.Task[None]] = set()  # checks in flight (a task nobody holds is collected)
_monotonic = time.monotonic
log = logging.getLogger("tokenrelay.server")


class FinishedEvents(Sequence[Event]):
    """A finished run's events, kept `retention_s` for late readers (Last-Event-ID), with each
    answer delta stored as its text: a `str` is not tracked by the garbage collector, an
    `AnswerDelta` is (48 bytes and a GC header each), and every full collection walks all
    of them. Readers get `AnswerDelta`s back, built on access."""

    __slots__ = ("_items",)

    def __init__(self, events: Sequence[Event]) -> None:
        self._items: list[Any] = [e.text if type(e) is AnswerDelta else e for e in events]

    def __len__(self) -> int:
        return len(self._items)

    @overload
    def __getitem__(self, index: int) -> Event: ...
    @overload
    def __getitem__(self, index: slice) -> list[Event]: ...
    def __getitem__(self, index: int | slice) -> Event | list[Event]:
        if isinstance(index, slice):
            return [new_answer_delta(x) if type(x) is str else x for x in self._items[index]]
        x = self._items[index]
        return new_answer_delta(x) if type(x) is str else cast(Event, x)

    def __iter__(self) -> Iterator[Event]:
        for x in self._items:
            yield new_answer_delta(x) if type(x) is str else x


@dataclass(eq=False)
class RunChannel:
    run_id: str
    owner: str | None
    session_id: str | None
    #: a list while the run goes on (followers read it by index), `FinishedEvents` once it ended
    events: Sequence[Event] = field(default_factory=list)
    done: bool = False
    task: asyncio.Task[None] | None = None
    finished_at: float | None = None
    followers: int = 0
    detached: bool = False
    #: called with (index, event) for each event as it is published (e.g. the Redis log)
    sink: Callable[[int, Event], None] | None = None
    #: an inline run's event source, until its first follower takes it and drives it itself
    source: AsyncIterator[Event] | None = None
    #: an inline run's keep-alive: called on a registry tick when nothing was published since
    on_idle: Callable[[], None] | None = None
    _fresh: bool = False
    #: a run that publishes this many events is stopped (`too_large`): bounded memory per run
    max_events: int = 100_000
    #: when each answer delta was published (time.monotonic), for a measured run (metrics)
    token_times: array[float] | None = None
    #: called once with the channel after its terminal event is published (metrics, run log)
    on_finish: Callable[[RunChannel], None] | None = None
    #: a detached run left without followers is cancelled after this many seconds (None: never)
    grace_s: float | None = None
    #: "is anyone following it elsewhere?" (e.g. through another worker), checked before cancelling
    followed_elsewhere: Callable[[RunChannel], Awaitable[bool]] | None = None
    _orphan_timer: asyncio.TimerHandle | None = None

    def follow(self) -> None:
        self.followers += 1
        if self._orphan_timer is not None:
            self._orphan_timer.cancel()
            self._orphan_timer = None

    def unfollow(self) -> None:
        """The follower left. An abandoned detached run gets `grace_s` to be resumed."""
        self.followers -= 1
        if self.followers == 0 and self.detached and not self.done and self.grace_s is not None:
            self._arm_orphan_timer()

    def _arm_orphan_timer(self) -> None:
        if self._orphan_timer is not None:
            self._orphan_timer.cancel()
        assert self.grace_s is not None
        self._orphan_timer = asyncio.get_running_loop().call_later(self.grace_s, self._orphaned)

    def _orphaned(self) -> None:
        self._orphan_timer = None
        if self.done or self.followers:
            return
        if self.followed_elsewhere is None:
            self.cancel()
            return
        task = asyncio.get_running_loop().create_task(self._check_elsewhere())
        _background.add(task)
        task.add_done_callback(_background.discard)

    async def _check_elsewhere(self) -> None:
        assert self.followed_elsewhere is not None
        try:
            elsewhere = await self.followed_elsewhere(self)
        except Exception:  # cannot tell (Redis away): keep the run, ask again later
            elsewhere = True
        if self.done or self.followers:
            return
        if elsewhere:
            self._arm_orphan_timer()
        else:
            self.cancel()

    @property
    def over_limit(self) -> bool:
        return not self.done and len(self.events) >= self.max_events - 1  # room for the error

    async def stop_over_limit(self, source: AsyncIterator[Event]) -> None:
        """Close the run's generator (the agent stores the turn interrupted) and end it."""
        await _aclose(source)
        self.publish(
            RunError(
                message=f"the run produced {self.max_events} events and was stopped (max_buffered_events)",
                code="too_large",
                answer=_answer(self),
            )
        )

    _waiters: list[asyncio.Future[bool]] = field(default_factory=list)

    def publish(self, event: Event) -> None:
        if self.done:
            return
        cast(list[Event], self.events).append(event)
        self._fresh = True
        if self.sink is not None:
            self.sink(len(self.events) - 1, event)
        if self.token_times is not None and type(event) is AnswerDelta:
            self.token_times.append(_monotonic())  # one float per token; metrics read it at the end
        if type(event) in _TERMINAL:
            self.done = True
            self.finished_at = time.monotonic()
            # current followers keep reading the list they hold; later ones get the compact copy
            if type(self.events) is list:  # (a remote channel's events are compact already)
                self.events = FinishedEvents(self.events)
            if self.on_finish is not None:
                try:
                    self.on_finish(self)
                except Exception:  # measuring a run must never break it
                    log.exception("run %s: recording its metrics failed", self.run_id)
        if self._waiters:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(False)

    async def next_event(self, known: int) -> bool:
        """Wait for an event beyond index `known`. Returns False when one arrived (or the run
        is done), True when woken by the registry's keep-alive tick instead."""
        if len(self.events) > known or self.done:
            return False
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        return await waiter

    def tick(self) -> None:
        """Wake idle followers so they can send a keep-alive."""
        if self.on_idle is not None and not self._fresh:
            self.on_idle()
        self._fresh = False
        if self._waiters:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(True)

    def cancel(self) -> bool:
        if self.task is None or self.task.done():
            return False
        self.task.cancel()
        return True


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
        #: see `RunChannel.followed_elsewhere`
        self.followed_elsewhere: Callable[[RunChannel], Awaitable[bool]] | None = None
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
        channel = RunChannel(run_id=run_id, owner=owner, session_id=session_id, detached=detached)
        channel.max_events = self.max_events
        channel.grace_s = self.grace_s
        channel.followed_elsewhere = self.followed_elsewhere
        if inline:
            channel.source = events
        else:
            channel.task = asyncio.create_task(self._pump(channel, events), name=f"run {run_id}")
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

    async def _pump(self, channel: RunChannel, events: AsyncIterator[Event]) -> None:
        try:
            async for event in events:
                channel.publish(event)
                if channel.over_limit:
                    await channel.stop_over_limit(events)
                    return
        except asyncio.CancelledError:
            # closing the generator runs the agent's cleanup (turn stored as interrupted)
            with contextlib.suppress(Exception):
                await asyncio.shield(_aclose(events))
            channel.publish(
                RunError(message="the run was cancelled", code="cancelled", answer=_answer(channel))
            )
        except Exception as exc:  # the agent turns failures into events; this is a last resort
            channel.publish(RunError(message=f"internal error: {type(exc).__name__}", code="internal"))
        finally:
            if not channel.done:
                channel.publish(RunError(message="the run ended without a result", code="internal"))

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


async def _aclose(events: AsyncIterator[Event]) -> None:
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        await aclose()


def answer_so_far(channel: RunChannel) -> str:
    return _answer(channel)


def _answer(channel: RunChannel) -> str:
    from tokenrelay.events import AnswerDelta

    return "".join(e.text for e in channel.events if type(e) is AnswerDelta)
