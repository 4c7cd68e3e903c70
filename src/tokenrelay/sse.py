"""Server-sent events, both ways: the typed-event encoder of the server and an incremental
`text/event-stream` decoder, as the HTML standard says. The one SSE module of the Python code.

Encoding: `event:` is the event type, `data:` its JSON, `id:` its index in the run.

    frames = encode_batch(events, first_id)      # bytes for the response body

Pure functions, on the per-token hot path: answer deltas are framed with a precomputed prefix
and one `json.dumps` of the text. JSON never contains a raw CR or LF (they are escaped in
strings), so model output can never break the framing, whatever it contains (`\\n\\ndata: `,
`event: `, `[DONE]`...).

Decoding:

    decoder = SSEDecoder()
    for chunk in response.iter_bytes():          # or str chunks: response.iter_text()
        for event in decoder.feed(chunk):
            handle(event.event, event.data, event.id)

The bundled client reads tokenrelay's typed events with it, and the OpenAI backend reads an
OpenAI-style stream (plain `data:` lines, `data: [DONE]`), which is the same grammar: it takes
`event.data` and ignores the rest.

Decoder invariants (https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation):

* any split of a stream into chunks gives the same events, even a split inside a UTF-8
  character or between the CR and the LF of a CRLF; a line is handled as soon as its line end
  arrives (a CR-only stream is not held back waiting for a possible LF);
* lines end at CR, LF or CRLF only, never at the other characters `str.splitlines` knows
  (U+2028, U+0085, ...); bytes are UTF-8 (invalid bytes become U+FFFD, never an exception);
  one U+FEFF byte order mark at the very start of the stream is dropped;
* comment lines (`:` first: keep-alives) are skipped, unknown fields ignored; `data` lines are
  joined with LF; an `id` containing NUL is ignored; `retry` counts only if all ASCII digits;
* a blank line dispatches the event built so far, only if it has at least one `data` line; the
  last event ID persists from event to event until an `id` field changes it (so a resuming
  client sends it as `Last-Event-ID`), and a block without data still updates it;
* at the end of the stream, an event without its closing blank line is discarded (`finish()`),
  unless `finish(flush=True)` asks for the lenient reading some OpenAI-compatible servers need;
* with `max_buffer`, a line or an event over that many characters raises `SSEDecodeError`
  instead of growing without bound.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Sequence
from typing import NamedTuple

from tokenrelay.events import AnswerDelta, Event, ReasoningDelta, event_to_dict

__all__ = ["KEEPALIVE", "SSEDecodeError", "SSEDecoder", "ServerSentEvent", "encode_batch", "encode_event"]

_LINE_END = re.compile(r"\r\n|\r|\n")


class SSEDecodeError(ValueError):
    """The stream holds a line or an event larger than the decoder's `max_buffer`."""


class ServerSentEvent(NamedTuple):
    """One dispatched event. A named tuple, not a dataclass: decoding is on the per-token path
    of streaming backends, and a tuple is the cheapest immutable record to build."""

    #: the event type: the `event` field, "message" when the block had none
    event: str = "message"
    #: the `data` lines, joined with LF
    data: str = ""
    #: the last event ID at dispatch ("" when the server never set one): what to send as Last-Event-ID
    id: str = ""
    #: the `retry` field of this event's block, in milliseconds (the decoder's `retry` keeps the latest)
    retry: int | None = None


class SSEDecoder:
    """Incremental decoder: `feed` chunks (bytes or str) as they arrive, `finish` at the end.

    `last_event_id` and `retry` (the server's reconnection time in ms, None until it sends one)
    are kept as the standard's EventSource keeps them; a resuming client can seed a new
    decoder with the `last_event_id` of the connection it replaces."""

    __slots__ = (
        "_block_retry",
        "_data",
        "_data_size",
        "_decode",
        "_event",
        "_id",
        "_max",
        "_pending",
        "_skip_lf",
        "_started",
        "last_event_id",
        "retry",
    )

    def __init__(self, *, last_event_id: str = "", max_buffer: int | None = None) -> None:
        self._decode = codecs.getincrementaldecoder("utf-8")("replace").decode
        self._pending = ""  # the start of a line whose end has not arrived yet
        self._skip_lf = False  # the last chunk ended with a CR: an LF first in the next one is its pair
        self._started = False  # past the first character (where a BOM may be)
        self._event = ""
        self._data: list[str] = []
        self._data_size = 0
        self._id = last_event_id  # the standard's "last event ID buffer"
        self._block_retry: int | None = None
        self._max = max_buffer
        self.last_event_id = last_event_id
        self.retry: int | None = None

    def feed(self, chunk: bytes | str) -> list[ServerSentEvent]:
        """The events that `chunk` completes, in order (often none, usually one)."""
        text = self._decode(chunk) if isinstance(chunk, bytes) else chunk
        if not self._started and text:
            self._started = True
            text = text.removeprefix("\ufeff")
        if self._skip_lf and text:
            self._skip_lf = False
            if text[0] == "\n":
                text = text[1:]
        if not text:
            return []
        if self._pending:
            text = self._pending + text
        if "\r" in text:
            lines = _LINE_END.split(text)
            self._skip_lf = text[-1] == "\r"
        else:  # the common case, LF line ends, where a plain split is several times cheaper
            lines = text.split("\n")
        self._pending = lines.pop()
        if self._max is not None and len(self._pending) > self._max:
            raise SSEDecodeError(f"an event stream line is longer than {self._max} characters")
        out: list[ServerSentEvent] = []
        data = self._data
        limit = self._max
        for line in lines:
            if not line:
                if data:  # `_dispatch`, inline (the per-token path)
                    event_id = self.last_event_id = self._id
                    out.append(
                        _new_event(
                            ServerSentEvent,
                            (
                                self._event or "message",
                                data[0] if len(data) == 1 else "\n".join(data),
                                event_id,
                                self._block_retry,
                            ),
                        )
                    )
                    data.clear()
                    if limit is not None:
                        self._data_size = 0
                    if self._event or self._block_retry is not None:
                        self._event, self._block_retry = "", None
                else:  # a blank line without data: no event, but the ID and type buffers settle
                    self.last_event_id = self._id
                    self._event, self._block_retry = "", None
            elif line.startswith("data:"):  # the common field, inline (the per-token path)
                value = line[6:] if line.startswith("data: ") else line[5:]
                data.append(value)
                if limit is not None:
                    self._data_size += len(value) + 1
                    if self._data_size > limit:
                        raise SSEDecodeError(f"an event stream event is larger than {limit} characters")
            else:
                self._line(line)
        return out

    def finish(self, *, flush: bool = False) -> list[ServerSentEvent]:
        """At the end of the stream. As the standard says, an event left without its closing
        blank line is discarded; with `flush=True` it is dispatched (an unterminated last line
        counts as a line), for servers that end a stream with `data: [DONE]` and no blank line."""
        tail = self._pending + self._decode(b"", True)
        self._pending = ""
        self._skip_lf = False
        if flush and tail:
            self._line(tail)
        event = self._dispatch() if flush and self._data else None
        self._event, self._data, self._data_size, self._block_retry = "", [], 0, None
        return [event] if event is not None else []

    def _line(self, line: str) -> None:
        if line[0] == ":":
            return
        name, _, value = line.partition(":")
        if value and value[0] == " ":
            value = value[1:]
        if name == "data":  # `feed` handles most `data:` lines itself, inline
            self._data.append(value)
            self._data_size += 1
            if self._max is not None and self._data_size > self._max:
                raise SSEDecodeError(f"an event stream event is larger than {self._max} characters")
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\x00" not in value:
                self._id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry = self._block_retry = int(value)

    def _dispatch(self) -> ServerSentEvent:
        self.last_event_id = self._id
        data = self._data
        event = _new_event(
            ServerSentEvent,
            (
                self._event or "message",
                data[0] if len(data) == 1 else "\n".join(data),
                self._id,
                self._block_retry,
            ),
        )
        self._event, self._data, self._data_size, self._block_retry = "", [], 0, None
        return event


#: builds a `ServerSentEvent` from a 4-tuple at half the cost of its generated `__new__`
_new_event = tuple.__new__


# -- encoding ---------------------------------------------------------------------------

#: a comment frame: keeps idle connections (and proxies) from timing out, ignored by clients
KEEPALIVE = b": keep-alive\n\n"

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
#: a str as a JSON string literal, exactly what `_dumps(str)` returns, without the encoder's dispatch
_quote = json.encoder.encode_basestring


def encode_event(event: Event | str, event_id: int) -> str:
    """One `id:`/`event:`/`data:` frame for `event`, `event_id` being its index in its run; a
    `str` is an answer delta's text (as a run's log keeps it: `RunChannel.log`)."""
    if type(event) is str:  # an answer delta: most frames of a run
        return (  # one f-string (a single BUILD_STRING): about half the cost of str.format + concatenation
            f'id: {event_id}\nevent: answer_delta\ndata: {{"type":"answer_delta","text":{_quote(event)}}}\n\n'
        )
    if type(event) is AnswerDelta or type(event) is ReasoningDelta:
        return (
            f'id: {event_id}\nevent: {event.type}\ndata: {{"type":"{event.type}","text":'
            f"{_quote(event.text)}}}\n\n"
        )
    return f"id: {event_id}\nevent: {event.type}\ndata: {_dumps(event_to_dict(event))}\n\n"  # type: ignore[union-attr,arg-type]


def _kind(item: Event | str) -> type:
    return AnswerDelta if type(item) is str else type(item)


def encode_batch(events: Sequence[Event | str], first_id: int) -> bytes:
    """Frames for `events` (a run's log: `str` items are answer text), whose ids start at
    `first_id` (an event's index in its run).

    Adjacent answer (or reasoning) deltas are merged into one frame: the text is unchanged,
    only the number of frames shrinks when a follower finds several events queued at once.
    A merged frame's id is the index of the last event it covers, so a client resuming with
    Last-Event-ID never receives text twice."""
    n = len(events)
    if n == 1:  # the common case: the follower keeps up, one event per wake-up
        return encode_event(events[0], first_id).encode()
    if n == 2:  # `full` mode keeping up: a token's reasoning delta and the answer text in it
        first, second = events
        if _kind(first) is not _kind(second):
            return (encode_event(first, first_id) + encode_event(second, first_id + 1)).encode()
    parts: list[str] = []
    i = 0
    while i < n:
        event = events[i]
        kind = _kind(event)
        j = i + 1
        if kind is AnswerDelta or kind is ReasoningDelta:
            while j < n and _kind(events[j]) is kind:
                j += 1
        if j - i > 1:
            text = "".join([e if type(e) is str else e.text for e in events[i:j]])  # type: ignore[union-attr]
            merged: Event | str = text if kind is AnswerDelta else ReasoningDelta(text=text)
            parts.append(encode_event(merged, first_id + j - 1))
        else:
            parts.append(encode_event(event, first_id + i))
        i = j
    return "".join(parts).encode()
