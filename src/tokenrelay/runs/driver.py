"""The one run driver: it pulls a run's events from its source (the agent's async generator)
into its channel, and every way a run can end is written here, once:

* finished: the source yields its terminal event (`RunFinished`, or the agent's own `RunError`);
* the source raises: `internal` error (the agent turns failures into events; a last resort);
* the source ends without a terminal event: `internal` error;
* too large: `max_events` reached, the source is closed, `too_large` error;
* cancelled (cancel by id, a disconnect of the last follower, shutdown): `cancelled` error;
* the client that drove an inline run left: `cancelled` error ("the client disconnected").

Closing the source runs the agent's cleanup (the turn is stored as interrupted with its
partial answer); every error event carries the answer so far.

Two modes: `run()` in a task of its own (the registry's default), or inline, where the
response that follows the run drives it (`RunDriver.take`, then `step()` whenever the follower
has read everything): one task instead of two, no task wake-up per event.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from tokenrelay.events import Event, RunError, RunFinished
from tokenrelay.runs.channel import RunChannel

__all__ = ["CANCELLED", "CLIENT_GONE", "RunDriver"]

CANCELLED = "the run was cancelled"
CLIENT_GONE = "the client disconnected"
NO_RESULT = "the run ended without a result"
_TERMINAL = (RunFinished, RunError)


class RunDriver:
    """Drives one run's `source` into its `channel`. Invariant: once the driver is done with
    a run (`run()` returned, `step()` returned False, `stop()`/`leave()` awaited), the channel
    ends with exactly one terminal event."""

    __slots__ = ("channel", "source")

    def __init__(self, channel: RunChannel, source: AsyncIterator[Event]) -> None:
        self.channel = channel
        self.source = source

    @classmethod
    def take(cls, channel: RunChannel) -> RunDriver | None:
        """The driver of an inline run, for its first follower (None for any other run, or
        once taken): the current task becomes the run's task, so `channel.cancel()` reaches it."""
        source = channel.take_source()
        if source is None:
            return None
        channel.bind_task(asyncio.current_task())
        return cls(channel, source)

    async def run(self) -> None:
        """Drive the run to its end, in a task of its own (cancel the task to cancel the run)."""
        channel, source = self.channel, self.source
        try:
            async for event in source:
                channel.publish(event)
                if channel.over_limit:
                    await self._too_large()
                    return
        except asyncio.CancelledError:
            await self.stop(CANCELLED)
        except Exception as exc:
            self._internal(exc)
        finally:
            if not channel.done:
                channel.publish(RunError(message=NO_RESULT, code="internal"))

    async def step(self) -> bool:
        """Advance an inline run by one event; False once it ended. A cancel of the calling
        task propagates: the caller decides between `stop(CANCELLED)` and `leave()`."""
        channel = self.channel
        try:
            event = await anext(self.source)
        except StopAsyncIteration:
            channel.publish(RunError(message=NO_RESULT, code="internal"))
            return False
        except Exception as exc:
            self._internal(exc)
            return False
        channel.publish(event)
        if channel.over_limit:
            await self._too_large()
            return False
        return type(event) not in _TERMINAL  # (the channel is done exactly then: no property per token)

    async def stop(self, message: str = CANCELLED) -> None:
        """End the run as cancelled: close the source (shielded: the agent's cleanup completes
        even while this task is being cancelled), then the `cancelled` error event."""
        with contextlib.suppress(Exception):
            await asyncio.shield(_aclose(self.source))
        self.channel.publish(RunError(message=message, code="cancelled", answer=self.channel.answer()))

    async def leave(self) -> None:
        """The inline follower that drove the run is gone: a run it left unfinished ends
        (its client disconnected), and its task is no longer the run's to cancel."""
        channel = self.channel
        if channel.task is asyncio.current_task():
            channel.bind_task(None)  # the request's task outlives this run: never cancel it later
        if not channel.done:
            await self.stop(CLIENT_GONE)
        else:  # ended: close the source now (its cleanup must not wait for garbage collection)
            with contextlib.suppress(Exception):
                await asyncio.shield(_aclose(self.source))

    async def _too_large(self) -> None:
        channel = self.channel
        with contextlib.suppress(Exception):
            await _aclose(self.source)
        channel.publish(
            RunError(
                message=f"the run produced {channel.max_events} events and was stopped (max_buffered_events)",
                code="too_large",
                answer=channel.answer(),
            )
        )

    def _internal(self, exc: Exception) -> None:
        self.channel.publish(RunError(message=f"internal error: {type(exc).__name__}", code="internal"))


async def _aclose(source: AsyncIterator[Event]) -> None:
    aclose = getattr(source, "aclose", None)
    if aclose is not None:
        await aclose()
