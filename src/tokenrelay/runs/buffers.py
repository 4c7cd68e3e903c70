"""What a channel keeps its events in, besides the live `list` of a local run: a view of that
list as `Event`s, a finished run's compact copy, and a remote reader's list that starts at an
offset. All are read by index like a list.

A local run's log holds each answer delta as its text: a `str` is not tracked by the garbage
collector, an `AnswerDelta` is (48 bytes and a GC header each), and every collection walks the
tracked objects still alive, so a thousand streams' answers would make each young collection
walk tens of thousands of them (pauses of several milliseconds in every stream). The follower's
encoders take the `str` items as they are (`Event | str`, `str` meaning answer text); anyone
else reads `Event`s, built on access (`EventsView`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, cast, overload

from tokenrelay.events import AnswerDelta, Event, new_answer_delta

__all__ = ["EventsView", "FinishedEvents", "OffsetEvents", "answer_text"]


def _event(item: Any) -> Event:
    return new_answer_delta(item) if type(item) is str else cast(Event, item)


def answer_text(items: Sequence[Event | str]) -> str:
    """The answer text of a log's items (`str` items and `AnswerDelta`s), in order."""
    if len(items) == 1:  # a follower keeping up: one item per write
        item = items[0]
        if isinstance(item, str):
            return item
        return item.text if type(item) is AnswerDelta else ""
    return "".join([x if isinstance(x, str) else x.text for x in items if isinstance(x, str | AnswerDelta)])


class _EventList(Sequence[Event]):
    """Indexing by int or by slice (step 1), as followers read a channel's events."""

    __slots__ = ()

    @overload
    def __getitem__(self, index: int) -> Event: ...
    @overload
    def __getitem__(self, index: slice) -> list[Event]: ...
    def __getitem__(self, index: int | slice) -> Event | list[Event]:
        return self._slice(index) if isinstance(index, slice) else self._at(index)

    def _at(self, index: int) -> Event:
        raise NotImplementedError

    def _slice(self, index: slice) -> list[Event]:
        raise NotImplementedError


class EventsView(_EventList):
    """A log's items (`Event`s, and answer deltas as their text) read as `Event`s; no copy:
    it follows the log as it grows."""

    __slots__ = ("_items",)

    def __init__(self, items: Sequence[Event | str]) -> None:
        self._items = items

    def __len__(self) -> int:
        return len(self._items)

    def _at(self, index: int) -> Event:
        return _event(self._items[index])

    def _slice(self, index: slice) -> list[Event]:
        return [_event(x) for x in self._items[index]]

    def __iter__(self) -> Iterator[Event]:
        return map(_event, self._items)


class FinishedEvents(EventsView):
    """A finished run's events, kept `retention_s` for late readers (Last-Event-ID): a copy of
    its log, every answer delta stored as its text."""

    __slots__ = ()

    def __init__(self, events: Sequence[Event | str]) -> None:
        super().__init__([e.text if isinstance(e, AnswerDelta) else e for e in events])


class OffsetEvents(_EventList):
    """A remote channel's events from index `offset` on: what a follower reads by index,
    without a placeholder for each event before `offset` (any Last-Event-ID costs O(1))."""

    __slots__ = ("_items", "offset")

    def __init__(self, offset: int) -> None:
        self.offset = offset
        self._items: list[Event] = []

    def append(self, event: Event) -> None:
        self._items.append(event)

    def __len__(self) -> int:
        return self.offset + len(self._items)

    def _slice(self, index: slice) -> list[Event]:
        start = index.start or 0
        if start < self.offset or index.step not in (None, 1):
            raise IndexError("events before the resume point are not held")
        stop = None if index.stop is None else index.stop - self.offset
        return self._items[start - self.offset : stop]

    def _at(self, index: int) -> Event:
        if index < 0:
            return self._items[index]
        if index < self.offset:
            raise IndexError("events before the resume point are not held")
        return self._items[index - self.offset]

    def __iter__(self) -> Iterator[Event]:
        return iter(self._items)
