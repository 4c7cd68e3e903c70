"""A one-line activity indicator on a terminal while an answer is awaited.

Invariants:

* it draws only on a terminal (`isatty()`, and `TERM` is not `dumb`): pipes, files and tests
  see nothing at all;
* it owns at most one line, drawn from column 0 and never wider than the terminal, so a
  carriage return and erase-to-end-of-line remove it completely;
* `hide()` is synchronous: a caller erases the line, then writes its own output, in one thread,
  so the indicator never interleaves with answer text or step lines;
* the frame task erases the line when it is cancelled, so Ctrl-C (which cancels every task)
  leaves no stray indicator behind.
"""

from __future__ import annotations

import asyncio
import os
import time
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

__all__ = ["Spinner"]

_ERASE = "\r\x1b[K"
_UNICODE_FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
_ASCII_FRAMES = "|/-\\"


class Spinner:
    """`show(label)` starts (or relabels) the indicator, `hide()` erases it.

    The first frame is drawn after `delay` seconds, so an answer that starts at once never
    flashes an indicator; a relabel while visible redraws at once, so short steps (a quick
    tool call) still show."""

    def __init__(self, stream: TextIO, *, interval: float = 0.1, delay: float = 0.1) -> None:
        self.stream = stream
        self.interval, self.delay = interval, delay
        self.enabled = _is_terminal(stream)
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
        self.unicode = encoding.startswith("utf")
        self.frames = _UNICODE_FRAMES if self.unicode else _ASCII_FRAMES
        self.label = ""
        self.visible = False
        self._since = 0.0  # when the current wait began (for the elapsed seconds shown)
        self._frame = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def show(self, label: str) -> None:
        """Start the indicator with `label`, or relabel it if it is running."""
        if not self.enabled:
            return
        if self.running:
            self.relabel(label)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # events rendered outside an event loop: nothing can animate
            return
        self.label = label
        self._since = time.monotonic()
        self._task = loop.create_task(self._tick())

    def relabel(self, label: str) -> None:
        """Say which step the wait is in now; nothing when the indicator is not running."""
        if self.running:
            self.label = label
            if self.visible:
                self._draw()

    @contextmanager
    def cleared(self) -> Iterator[None]:
        """Erase the line for output written inside the block, and redraw it after."""
        was_visible = self.visible
        self._erase()
        try:
            yield
        finally:
            if was_visible and self.running:
                self._draw()

    def hide(self) -> None:
        """Stop the indicator and erase its line."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self._erase()

    async def _tick(self) -> None:
        try:
            await asyncio.sleep(self.delay)
            while True:
                self._draw()
                await asyncio.sleep(self.interval)
        finally:
            self._erase()

    def _draw(self) -> None:
        self._frame = (self._frame + 1) % len(self.frames)
        elapsed = int(time.monotonic() - self._since)
        ellipsis = "…" if self.unicode else "..."
        text = f"{self.frames[self._frame]} {self.label}{ellipsis}" + (f" {elapsed}s" if elapsed else "")
        self.stream.write(_ERASE + _fit(text, _columns(self.stream)))
        self.stream.flush()
        self.visible = True

    def _erase(self) -> None:
        if self.visible:
            self.visible = False
            self.stream.write(_ERASE)
            self.stream.flush()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty() and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


def _columns(stream: TextIO) -> int:
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, ValueError, OSError):
        columns = 0
    return columns if columns > 0 else 80  # a terminal that reports no size (a bare pty)


def _fit(text: str, columns: int) -> str:
    """At most one terminal line: a wrapped line could not be erased with a carriage return.
    Wide characters (CJK, as in a Japanese tool name) take two columns."""
    room = max(1, columns - 1)
    for end, char in enumerate(text):
        room -= 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1
        if room < 0:
            return text[:end]
    return text
