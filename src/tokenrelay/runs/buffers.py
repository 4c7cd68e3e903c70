"""The event lists a channel can hold besides a plain `list`: a finished run's compact copy and a
remote reader's list that starts at an offset. Both are read by index like a list."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, cast, overload

from tokenrelay.events import AnswerDelta, Event, new_answer_delta

__all__ = ["FinishedEvents", "OffsetEvents"]


def _event(item: Any) -> Event:
    return new_answer_delta(item) if type(item) is str else cast(Event, item)


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


class FinishedEvents(_EventList):
    """A finished run's events, kept `retention_s` for late readers (Last-Event-ID), with each
    answer delta stored as its text: a `str` is not tracked by the garbage collector, an
    `AnswerDelta` is (48 bytes and a GC header each), and every full collection walks all
    of them. Readers get `AnswerDelta`s back, built on access."""

    __slots__ = ("_items",)

    def __init__(self, events: Sequence[Event]) -> None:
        self._items: list[Any] = [e.text if type(e) is AnswerDelta else e for e in events]

    def __len__(self) -> int:
        return len(self._items)

    def _at(self, index: int) -> Event:
        return _event(self._items[index])

    def _slice(self, index: slice) -> list[Event]:
        return [_event(x) for x in self._items[index]]

    def __iter__(self) -> Iterator[Event]:
        return map(_event, self._items)


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
