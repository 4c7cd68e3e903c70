"""A run's channel: its numbered event log, which any number of followers read while one
producer (a `RunDriver`, or a remote reader of the Redis log) appends to it.

Invariants:
* the events are append-only and end with exactly one terminal event (`RunFinished` or
  `RunError`); after it, `publish` is a no-op;
* followers read `events` by index and wait with `next_event`: every event from where they
  start, in order, each once; they never block the producer (a run's output is bounded by
  max_tokens per model call and max_iterations, and by `max_events`); they all wait on one event
  loop, the first one's (a server's process has one);
* a local run keeps each answer delta in its `log` as its text, which the garbage collector
  never walks (runs/buffers.py); the follower that streams reads `log`, anyone else `events`;
* the state is read-only from outside: properties to read, one method per change;
* a detached run whose last follower leaves gets its resume grace (`grace.py`), then is
  cancelled; a run that is not detached is the caller's to cancel (see `FollowResponse`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from array import array
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from functools import partial

from tokenrelay.events import AnswerDelta, Event, RunError, RunFinished
from tokenrelay.runs.buffers import EventsView, FinishedEvents, answer_text
from tokenrelay.runs.grace import ResumeGrace

__all__ = ["RunChannel"]

_TERMINAL = (RunFinished, RunError)
_monotonic = time.monotonic
log = logging.getLogger("tokenrelay.server")


class RunChannel:
    """One run's event log and the state around it (task, followers, hooks)."""

    __slots__ = (
        "_detached",
        "_done",
        "_events",
        "_finished_at",
        "_followers",
        "_fresh",
        "_grace",
        "_loop",
        "_max_events",
        "_on_finish",
        "_on_idle",
        "_owner",
        "_run_id",
        "_session_id",
        "_sink",
        "_source",
        "_task",
        "_token_times",
        "_waiters",
    )

    def __init__(
        self,
        run_id: str,
        *,
        owner: str | None,
        session_id: str | None,
        detached: bool = False,
        max_events: int = 100_000,
        grace_s: float | None = None,
        followed_elsewhere: Callable[[str], Awaitable[bool]] | None = None,
        events: Sequence[Event] | None = None,
    ) -> None:
        """`events`: where the log is kept (a `list` unless given: a remote reader passes an
        `OffsetEvents`). `grace_s` (None: never) and `followed_elsewhere` make the resume
        grace of a detached run."""
        self._run_id = run_id
        self._owner = owner
        self._session_id = session_id
        self._detached = detached
        self._max_events = max_events
        self._events: Sequence[Event | str] = [] if events is None else events
        self._done = False
        self._finished_at: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._followers = 0
        self._fresh = False
        self._waiters: list[asyncio.Future[bool]] = []
        self._loop: asyncio.AbstractEventLoop | None = None  # the followers', once one waited
        self._sink: Callable[[int, Event], None] | None = None
        self._source: AsyncIterator[Event] | None = None
        self._on_idle: Callable[[], None] | None = None
        self._on_finish: Callable[[RunChannel], None] | None = None
        self._token_times: array[float] | None = None
        self._grace: ResumeGrace | None = None
        if detached and grace_s is not None:
            elsewhere = partial(followed_elsewhere, run_id) if followed_elsewhere is not None else None
            self._grace = ResumeGrace(self, grace_s, elsewhere)

    def __repr__(self) -> str:
        return f"RunChannel({self._run_id!r}, events={len(self._events)}, done={self._done})"

    # -- reading ------------------------------------------------------------------------

    @property
    def run_id(self) -> str:
        return self._run_id

    @property
    def owner(self) -> str | None:
        return self._owner

    @property
    def session_id(self) -> str | None:
        return self._session_id

    @property
    def detached(self) -> bool:
        """Started resumable: it outlives its followers (for its resume grace)."""
        return self._detached

    @property
    def events(self) -> Sequence[Event]:
        """Every event so far, by index (a view of `log`: answer deltas built on access)."""
        items = self._events
        return EventsView(items) if type(items) is list else items  # type: ignore[return-value]

    @property
    def log(self) -> Sequence[Event | str]:
        """The events as kept, for the follower that streams them: a `list` while the run goes
        on, where a `str` is an answer delta's text (runs/buffers.py); a compact copy once it ended."""
        return self._events

    @property
    def done(self) -> bool:
        return self._done

    @property
    def finished_at(self) -> float | None:
        """time.monotonic() of the terminal event."""
        return self._finished_at

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The task that produces the events (cancelled by `cancel`)."""
        return self._task

    @property
    def followers(self) -> int:
        return self._followers

    @property
    def max_events(self) -> int:
        return self._max_events

    @property
    def token_times(self) -> array[float] | None:
        """When each answer delta was published (time.monotonic), for a measured run."""
        return self._token_times

    @property
    def over_limit(self) -> bool:
        """Room for only the terminal event left (the driver then stops the run: too_large)."""
        return not self._done and len(self._events) >= self._max_events - 1

    def answer(self) -> str:
        """The answer text published so far."""
        return answer_text(self._events)

    async def next_event(self, known: int) -> bool:
        """Wait for an event beyond index `known`. Returns False when one arrived (or the run
        is done), True when woken by the registry's keep-alive tick instead."""
        if len(self._events) > known or self._done:
            return False
        loop = self._loop  # (asking asyncio for it costs a getpid() system call per wait on 3.11)
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        self._waiters.append(waiter)
        return await waiter

    # -- changing -----------------------------------------------------------------------

    def publish(self, event: Event) -> None:
        """Append an event and wake the followers (the per-token path: keep it lean)."""
        if self._done:
            return
        events = self._events
        # a local run's list keeps an answer delta as its text; a remote one's OffsetEvents, the event
        events.append(event.text if type(event) is AnswerDelta and type(events) is list else event)  # type: ignore[attr-defined]
        self._fresh = True
        if self._sink is not None:
            self._sink(len(events) - 1, event)
        if self._token_times is not None and type(event) is AnswerDelta:
            self._token_times.append(_monotonic())  # one float per token; metrics read it at the end
        if type(event) in _TERMINAL:
            self._end()
        if self._waiters:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(False)

    def _end(self) -> None:
        self._done = True
        self._finished_at = time.monotonic()
        if self._grace is not None:
            self._grace.stop()
        # current followers keep reading the list they hold; later ones get the compact copy
        if type(self._events) is list:  # (a remote channel's events are compact already)
            self._events = FinishedEvents(self._events)
        if self._on_finish is not None:
            try:
                self._on_finish(self)
            except Exception:  # measuring a run must never break it
                log.exception("run %s: recording its metrics failed", self._run_id)

    def bind_task(self, task: asyncio.Task[None] | None) -> None:
        """The task that produces this run's events (None: no task to cancel any more)."""
        self._task = task

    def offer(self, source: AsyncIterator[Event]) -> None:
        """Leave an inline run's event source for its first follower to drive."""
        self._source = source

    def take_source(self) -> AsyncIterator[Event] | None:
        """The inline source, once: whoever takes it drives the run (see `RunDriver.take`)."""
        source, self._source = self._source, None
        return source

    def follow(self) -> None:
        self._followers += 1
        if self._grace is not None:
            self._grace.stop()

    def unfollow(self) -> None:
        """The follower left. An abandoned detached run gets its resume grace."""
        self._followers -= 1
        if self._followers == 0 and not self._done and self._grace is not None:
            self._grace.start()

    def set_idle_hook(self, on_idle: Callable[[], None] | None) -> None:
        """Called on a registry tick when nothing was published since (an inline run's keep-alive)."""
        self._on_idle = on_idle

    def replicate(self, sink: Callable[[int, Event], None]) -> None:
        """Call `sink(index, event)` for every event, those published so far and each later one
        as it is published (e.g. the Redis log)."""
        for index, event in enumerate(self.events):
            sink(index, event)
        self._sink = sink

    def measure(self, on_finish: Callable[[RunChannel], None], *, token_times: bool = False) -> None:
        """Call `on_finish(channel)` once after the terminal event; with `token_times`, record
        when each answer delta is published."""
        self._on_finish = on_finish
        if token_times:
            self._token_times = array("d")

    def tick(self) -> None:
        """Wake idle followers so they can send a keep-alive."""
        if self._on_idle is not None and not self._fresh:
            self._on_idle()
        self._fresh = False
        if self._waiters:
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(True)

    def cancel(self) -> bool:
        """Cancel the task that produces the events (its driver ends the run: `cancelled`)."""
        if self._task is None or self._task.done():
            return False
        self._task.cancel()
        return True
