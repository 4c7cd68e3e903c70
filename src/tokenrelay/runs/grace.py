"""The resume grace of a detached (resumable) run that lost its last follower: a page reload or
a dropped connection gets `grace_s` to come back; after that the run is cancelled, so a closed
tab never keeps the model running. With several workers, a follower may be reading the run
through another worker: `followed_elsewhere` is asked first, and while it says yes (or cannot
tell) the grace starts over."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol

__all__ = ["ResumeGrace"]

_background: set[asyncio.Task[None]] = set()  # checks in flight (a task nobody holds is collected)


class Abandonable(Protocol):
    """What the grace needs of a run (a `RunChannel`)."""

    @property
    def done(self) -> bool: ...
    @property
    def followers(self) -> int: ...
    def cancel(self) -> bool: ...


class ResumeGrace:
    """One run's grace timer. Invariant: at most one timer is armed; it never cancels a run
    that ended or that has a follower again when it fires."""

    __slots__ = ("_elsewhere", "_run", "_timer", "grace_s")

    def __init__(
        self,
        run: Abandonable,
        grace_s: float,
        followed_elsewhere: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        self._run = run
        self.grace_s = grace_s
        self._elsewhere = followed_elsewhere
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """The last follower left: cancel the run in `grace_s` unless one comes back."""
        self.stop()
        self._timer = asyncio.get_running_loop().call_later(self.grace_s, self._expired)

    def stop(self) -> None:
        """A follower came back (or the run ended): no cancel."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _abandoned(self) -> bool:
        return not self._run.done and not self._run.followers

    def _expired(self) -> None:
        self._timer = None
        if not self._abandoned():
            return
        if self._elsewhere is None:
            self._run.cancel()
            return
        task = asyncio.get_running_loop().create_task(self._check_elsewhere(self._elsewhere))
        _background.add(task)
        task.add_done_callback(_background.discard)

    async def _check_elsewhere(self, elsewhere: Callable[[], Awaitable[bool]]) -> None:
        try:
            followed = await elsewhere()
        except Exception:  # cannot tell (Redis away): keep the run, ask again later
            followed = True
        if not self._abandoned():
            return
        if followed:
            self.start()
        else:
            self._run.cancel()
