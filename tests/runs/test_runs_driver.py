"""`RunDriver` (runs/driver.py), every way a run ends, checked on the driver directly: finished,
the source raises, the source ends without a result, too large, cancelled, the client gone; in
a task of its own (`run`) and inline (`take` + `step`). Each ends with exactly one terminal
event, and a source that is stopped is closed (the agent's cleanup runs)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tokenrelay.events import AnswerDelta, Event, RunError, RunFinished, RunStarted
from tokenrelay.runs import RunChannel, RunDriver, RunRegistry
from tokenrelay.runs.driver import CANCELLED, CLIENT_GONE

pytestmark = pytest.mark.anyio


class Source:
    """An agent-like event source: yields `events`, then optionally raises or hangs; records
    whether it was closed (as `aclose` runs the agent's cleanup)."""

    def __init__(self, events: list[Event], *, then: str = "end") -> None:
        self.events = events
        self.then = then  # end | raise | hang
        self.closed = False
        self._gen = self._run()

    async def _run(self) -> AsyncIterator[Event]:
        try:
            for event in self.events:
                yield event
            if self.then == "raise":
                raise ValueError("boom")
            if self.then == "hang":
                await asyncio.Event().wait()
        finally:
            self.closed = True

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._gen


def channel(max_events: int = 100_000, **kwargs: object) -> RunChannel:
    return RunChannel("run_1", owner=None, session_id=None, max_events=max_events, **kwargs)  # type: ignore[arg-type]


def deltas(*texts: str) -> list[Event]:
    return [RunStarted(run_id="run_1"), *(AnswerDelta(text=t) for t in texts)]


def terminal(ch: RunChannel) -> Event:
    assert ch.done
    ends = [e for e in ch.events if isinstance(e, RunFinished | RunError)]
    assert len(ends) == 1 and ends[0] is ch.events[-1]
    return ends[0]


async def test_a_finished_run_ends_with_its_own_terminal_event() -> None:
    ch = channel()
    source = Source([*deltas("a", "b"), RunFinished(answer="ab")])
    await RunDriver(ch, aiter(source)).run()
    end = terminal(ch)
    assert isinstance(end, RunFinished) and end.answer == "ab"
    assert len(ch.events) == 4


async def test_a_source_that_raises_ends_with_an_internal_error() -> None:
    ch = channel()
    await RunDriver(ch, aiter(Source(deltas("a"), then="raise"))).run()
    end = terminal(ch)
    assert isinstance(end, RunError) and end.code == "internal" and "ValueError" in end.message


async def test_a_source_that_ends_without_a_result_ends_with_an_internal_error() -> None:
    ch = channel()
    await RunDriver(ch, aiter(Source(deltas("a")))).run()
    end = terminal(ch)
    assert isinstance(end, RunError) and end.code == "internal" and "without a result" in end.message


async def test_a_run_that_reaches_max_events_is_stopped_too_large_and_its_source_closed() -> None:
    ch = channel(max_events=5)
    source = Source(deltas(*"abcdefghij"), then="hang")
    await RunDriver(ch, aiter(source)).run()
    end = terminal(ch)
    assert isinstance(end, RunError) and end.code == "too_large"
    assert len(ch.events) == 5 and source.closed
    assert end.answer == "abc"  # the answer so far travels with the error


async def test_cancelling_the_task_ends_the_run_cancelled_with_its_answer_so_far() -> None:
    registry = RunRegistry()
    source = Source(deltas("partial "), then="hang")
    ch = registry.start("run_1", aiter(source), owner=None, session_id=None)
    for _ in range(10):  # let the driver's task publish what the source has
        await asyncio.sleep(0)
    assert len(ch.events) == 2
    assert ch.cancel()
    assert ch.task is not None
    await asyncio.gather(ch.task, return_exceptions=True)
    end = terminal(ch)
    assert isinstance(end, RunError) and end.code == "cancelled" and end.message == CANCELLED
    assert end.answer == "partial " and source.closed


async def test_inline_take_gives_the_driver_once_and_binds_the_current_task() -> None:
    ch = channel()
    ch.offer(aiter(Source([RunFinished(answer="")])))
    driver = RunDriver.take(ch)
    assert driver is not None and ch.task is asyncio.current_task()
    assert RunDriver.take(ch) is None  # only the first follower drives
    assert RunDriver.take(channel()) is None  # a run in a task of its own has nothing to take
    assert await driver.step() is False
    await driver.leave()
    assert ch.task is None  # the request's task is never the run's to cancel afterwards


async def test_inline_steps_publish_one_event_each_and_end_like_run() -> None:
    ch = channel()
    ch.offer(aiter(Source(deltas("a", "b"), then="raise")))
    driver = RunDriver.take(ch)
    assert driver is not None
    steps = 0
    while await driver.step():
        steps += 1
        assert len(ch.events) == steps
    end = terminal(ch)
    assert isinstance(end, RunError) and end.code == "internal"


async def test_inline_too_large_and_no_result_end_the_same_way_as_in_a_task() -> None:
    big = channel(max_events=3)
    big.offer(aiter(Source(deltas(*"abcdef"))))
    driver = RunDriver.take(big)
    assert driver is not None
    while await driver.step():
        pass
    assert terminal(big).code == "too_large"  # type: ignore[union-attr]
    empty = channel()
    empty.offer(aiter(Source([])))
    driver = RunDriver.take(empty)
    assert driver is not None
    assert await driver.step() is False
    assert terminal(empty).code == "internal"  # type: ignore[union-attr]


async def test_an_inline_run_its_client_left_ends_cancelled_client_gone() -> None:
    ch = channel()
    source = Source(deltas("so far"), then="hang")
    ch.offer(aiter(source))
    driver = RunDriver.take(ch)
    assert driver is not None
    assert await driver.step() and await driver.step()
    await driver.leave()
    end = terminal(ch)
    assert isinstance(end, RunError) and end.code == "cancelled" and end.message == CLIENT_GONE
    assert end.answer == "so far" and source.closed


async def test_an_inline_run_that_ended_has_its_source_closed_when_its_follower_leaves() -> None:
    """Code after the terminal event (an agent storing its turn in a `finally`) runs when the
    follower leaves, not whenever the generator happens to be garbage-collected."""
    cleaned: list[str] = []

    async def source() -> AsyncIterator[Event]:
        try:
            yield RunStarted(run_id="run_1")
            yield RunError(message="boom", code="backend")
            yield AnswerDelta(text="never read")
        finally:
            cleaned.append("stored")

    ch = channel()
    ch.offer(source())
    driver = RunDriver.take(ch)
    assert driver is not None
    while await driver.step():
        pass
    assert cleaned == []
    await driver.leave()
    assert cleaned == ["stored"]
    assert isinstance(terminal(ch), RunError) and len(ch.events) == 2


async def test_stop_is_idempotent_and_nothing_follows_the_terminal_event() -> None:
    ch = channel()
    driver = RunDriver(ch, aiter(Source(deltas("x"), then="hang")))
    await driver.stop()
    await driver.stop()
    await driver.leave()
    ch.publish(AnswerDelta(text="late"))
    end = terminal(ch)
    assert isinstance(end, RunError) and end.code == "cancelled"
    assert len(ch.events) == 1


async def test_a_detached_run_nobody_follows_is_cancelled_after_its_grace() -> None:
    registry = RunRegistry(grace_s=0.05)
    ch = registry.start("run_1", aiter(Source(deltas("a"), then="hang")), owner=None, session_id=None,
                        detached=True)  # fmt: skip
    ch.follow()
    ch.unfollow()
    assert ch.task is not None
    await asyncio.wait_for(asyncio.gather(ch.task, return_exceptions=True), 2.0)
    assert terminal(ch).code == "cancelled"  # type: ignore[union-attr]
