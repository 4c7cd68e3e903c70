"""The consumer side of a LangChain run's events: a thread-safe queue one async reader follows.

LangChain calls the handler from the event loop (async code) or from worker threads (sync code
run by LangChain or LangGraph); `EventQueue` takes events under a lock from either, and wakes
the one reader (`_follow`) on its loop, thread-safely. The run ends once, by `finish` or
`fail` (later calls do nothing); the reader then gets the subclass's terminal event.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

from tokenrelay.events import Event

__all__ = ["EventQueue"]


class EventQueue:
    """Events of one run, produced under `_lock` from any thread, read by one async reader."""

    _lock: threading.Lock
    _pending: list[Event]
    _waiter: asyncio.Future[None] | None
    _loop: asyncio.AbstractEventLoop | None
    _loop_thread: int | None
    _closed: bool
    _result: Any
    _error: BaseException | None

    def _init_queue(self) -> None:
        self._lock = threading.Lock()
        self._pending = []
        self._waiter = None
        self._loop = None
        self._loop_thread = None
        self._closed = False
        self._result = None
        self._error = None

    @property
    def closed(self) -> bool:
        return self._closed

    def finish(self, result: Any = None) -> None:
        """End the run successfully; `result` supplies the answer if none streamed."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._result = result
        self._wake()

    def fail(self, error: BaseException) -> None:
        """End the run with an error (it becomes the terminal `RunError`)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._error = error
        self._wake()

    def bind_loop(self) -> None:
        """Bind to the running event loop (done by `events()`; call it first when callbacks
        may arrive from other threads before iteration starts)."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._loop_thread = threading.get_ident()

    def _wake(self) -> None:
        loop = self._loop
        if self._waiter is None or loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            self._wake_in_loop()
        else:
            try:
                loop.call_soon_threadsafe(self._wake_in_loop)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass

    def _wake_in_loop(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def _follow(self) -> AsyncIterator[Event]:
        """Everything after `RunStarted`, ending with the terminal event."""
        self.bind_loop()
        loop = self._loop
        assert loop is not None
        while True:
            with self._lock:
                batch, self._pending = self._pending, []
                closed = self._closed
                if not batch and not closed:
                    waiter: asyncio.Future[None] = loop.create_future()
                    self._waiter = waiter
            if batch:
                for event in batch:
                    yield event
                continue
            if closed:
                break
            await waiter
        yield self._terminal()

    def _emit(self, event: Event) -> None:
        """Queue `event` (under the lock; dropped once the run is closed)."""
        if not self._closed:
            self._pending.append(event)

    def _terminal(self) -> Event:
        """The run's last event (`RunFinished` or `RunError`), once the queue is closed."""
        raise NotImplementedError
