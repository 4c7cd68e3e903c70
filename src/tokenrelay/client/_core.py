"""The client's one core: what to send, how to read the answer, when and how to resume.

It does no I/O. `StreamCore.plan()` is a generator of operations (`_ops.py`: `Open` a request,
`Read` the next chunk, `Close`, `Sleep`, `Emit` items to the caller) that a face carries out
with httpx, sending back each result or throwing in the transport error it raised: `_sync.py`
with `httpx.Client`, `_async.py` with `httpx.AsyncClient`. Everything else (request building,
error statuses, incremental UTF-8, SSE, resuming) is written once, here.

Resuming, as a browser's EventSource does it: when the connection drops before the run's end
(a read error, a stall, a body that ends without its terminal event), wait (the server's
`retry:`, else `Reconnect.delay`, doubling per failed try up to `max_delay`), then
`GET /runs/{run_id}/events` with `Last-Event-ID` and go on with exactly the events after it.
The raw text of `/chat` has no event ids: its resumption reads the same event route from the
start and skips as many answer characters as were already yielded (raw text is the answer
deltas concatenated; `narration` events re-label text, they never change it). A try that
delivers events resets the count of failed ones; `Reconnect.attempts` failed tries in a row,
or a 4xx from the event route (the run is unknown there), end the stream with
`IncompleteStreamError`.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

import httpx

from tokenrelay.client._errors import (
    INCOMPLETE_MESSAGE,
    IncompleteStreamError,
    TokenrelayClientError,
    TokenrelayHTTPError,
    connection_error,
    http_error,
    one_line,
)
from tokenrelay.client._ops import (
    CLOSE,
    READ,
    TRANSPORT_ERRORS,
    Emit,
    Feed,
    Op,
    Open,
    Plan,
    Request,
    Sleep,
)
from tokenrelay.events import AnswerDelta, Event, RunError, RunFinished, event_from_dict
from tokenrelay.sse import ServerSentEvent, SSEDecoder

__all__ = [
    "DEFAULT_TIMEOUT",
    "RECONNECT",
    "Reconnect",
    "StreamCore",
]

#: seconds to wait for the next piece of a stream (a model may think for a while)
DEFAULT_TIMEOUT = 300.0
CONNECT_TIMEOUT = 10.0
#: the explicit cancel of a run the caller left is best effort: it never holds them up long
CANCEL_TIMEOUT = 5.0
_ERROR_BODY_LIMIT = 64 * 1024


@dataclass(frozen=True, kw_only=True, slots=True)
class Reconnect:
    """How a stream resumes its run after the connection drops.

    `attempts`: failed tries in a row before the stream gives up (`IncompleteStreamError`);
    `delay`: seconds before a try, doubled after each failed one up to `max_delay`; a server's
    `retry:` field replaces it, as in a browser's EventSource."""

    attempts: int = 5
    delay: float = 0.5
    max_delay: float = 10.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.delay < 0 or self.max_delay < 0:
            raise ValueError(
                "Reconnect needs attempts >= 1 and delays >= 0 (reconnect=None turns resuming off)"
            )


RECONNECT = Reconnect()


def _timeout(read_timeout: float | None) -> httpx.Timeout:
    connect = CONNECT_TIMEOUT if read_timeout is None else min(CONNECT_TIMEOUT, read_timeout)
    return httpx.Timeout(read_timeout, connect=connect)


def _auth(api_key: str | None) -> dict[str, str]:
    # resolved by the caller (`api_key`, else TOKENRELAY_API_KEY); never quoted in a message
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


class StreamCore:
    """One stream's state, across the connections that carry it. `kind` says what it yields:
    answer text (`str`, from `/chat`) or `Event`s (from `/chat/events`)."""

    def __init__(
        self,
        kind: Literal["text", "events"],
        url: str,
        body: dict[str, Any],
        *,
        api_key: str | None,
        timeout: float | None,
        reconnect: Reconnect | None,
    ) -> None:
        path = "/chat" if kind == "text" else "/chat/events"
        base = url.strip().rstrip("/")
        self._base = base.removesuffix(path)  # a URL that already names the route is fine
        self._kind = kind
        self._auth = _auth(api_key)
        self._timeout = _timeout(timeout)
        self._read_timeout = timeout
        self._reconnect = reconnect
        accept = "text/plain" if kind == "text" else "text/event-stream"
        if reconnect is not None:
            body = {**body, "resumable": True}  # the run must outlive a dropped connection
        self._first = Request(
            "POST", self._base + path, {"Accept": accept, **self._auth}, body, self._timeout
        )
        self.session_id: str | None = None
        self.run_id: str | None = None
        self.last_event_id: str | None = None
        #: successful reconnections so far
        self.reconnects = 0
        #: the run is over for this client (ended, or unknown to the server): nothing to cancel
        self.done = False
        self._parts: list[str] = []  # answer text yielded (events: the answer deltas' text)
        self._emitted = 0
        self._received = 0  # events read over all connections: a try that adds some made progress
        self._skip = 0  # answer characters a text stream's resumption has still to skip
        self._retry_s: float | None = None
        self._failure: RunError | None = None

    @property
    def text(self) -> str:
        return "".join(self._parts)

    # ------------------------------------------------------------------ the plan

    def plan(self) -> Plan:
        first = self._first
        try:
            response = yield Open(first)
        except TRANSPORT_ERRORS as exc:
            raise connection_error(first.url, exc) from None
        assert isinstance(response, httpx.Response)
        if response.status_code >= 400:
            raise (yield from self._http_error(response))
        self.session_id = response.headers.get("x-session-id")
        self.run_id = response.headers.get("x-run-id")
        why = yield from self._follow(self._text_feed() if self._kind == "text" else self._event_feed())
        failed = 0
        while why is not None:
            if self._reconnect is None or self.run_id is None or (self._emitted and self._cannot_resume()):
                raise IncompleteStreamError(
                    self.text, f"{why}; {INCOMPLETE_MESSAGE}" if why else INCOMPLETE_MESSAGE
                )
            if failed >= self._reconnect.attempts:
                raise IncompleteStreamError(
                    self.text,
                    f"{INCOMPLETE_MESSAGE}; {failed} tries to resume it failed, the last: "
                    f"{why or 'the connection dropped'}",
                )
            yield Sleep(self._delay(failed))
            failed += 1
            if self._kind == "text" and self.last_event_id is None:
                self._skip = len(self.text)  # the event route replays the answer from its start
            resume = self._resume_request()
            try:
                response = yield Open(resume)
            except TRANSPORT_ERRORS as exc:
                why = str(connection_error(resume.url, exc))
                continue
            assert isinstance(response, httpx.Response)
            if response.status_code >= 400:
                error = yield from self._http_error(response)
                if 400 <= error.status < 500 and error.status not in (408, 429):
                    self.done = True
                    raise IncompleteStreamError(
                        self.text, f"{INCOMPLETE_MESSAGE}; it cannot be resumed: {error}"
                    )
                why = str(error)
                continue
            self.reconnects += 1
            received = self._received
            why = yield from self._follow(self._event_feed())
            if self._received > received:
                failed = 0

    def _cannot_resume(self) -> bool:
        # events already yielded and no id to say which: a resumption could repeat them
        return self._kind == "events" and self.last_event_id is None

    def _follow(self, feed: Feed) -> Generator[Op, object, str | None]:
        """Read one response to its end. None when the stream is complete, else why it
        dropped ("" for a plain early end)."""
        while True:
            try:
                chunk = yield READ
            except httpx.TimeoutException:
                yield CLOSE
                return f"the server sent nothing for {self._read_timeout} s"
            except TRANSPORT_ERRORS:
                yield CLOSE
                return ""
            assert isinstance(chunk, bytes)
            items = feed(chunk)
            if items:
                yield Emit(items)
            if self.done or not chunk:
                yield CLOSE
                if self._failure is not None:
                    failure = self._failure
                    raise IncompleteStreamError(
                        self.text, f"{INCOMPLETE_MESSAGE} ({failure.code}: {one_line(failure.message)})"
                    )
                return None if self.done else ""

    def _http_error(self, response: httpx.Response) -> Generator[Op, object, TokenrelayHTTPError]:
        body = b""
        while len(body) < _ERROR_BODY_LIMIT:
            try:
                chunk = yield READ
            except TRANSPORT_ERRORS:
                break
            assert isinstance(chunk, bytes)
            if not chunk:
                break
            body += chunk
        yield CLOSE
        return http_error(response.status_code, response.reason_phrase, body)

    def _delay(self, failed: int) -> float:
        assert self._reconnect is not None
        base = self._retry_s if self._retry_s is not None else self._reconnect.delay
        return min(base * 2.0**failed, max(base, self._reconnect.max_delay))

    def _resume_request(self) -> Request:
        assert self.run_id is not None
        headers = {"Accept": "text/event-stream", **self._auth}
        if self.last_event_id is not None:
            headers["Last-Event-ID"] = self.last_event_id
        url = f"{self._base}/runs/{quote(self.run_id, safe='')}/events"
        return Request("GET", url, headers, None, self._timeout)

    def cancel_request(self) -> Request | None:
        """What to send when the caller leaves before the end: the run was started resumable, so
        the server keeps it going after a disconnect; a caller who left on purpose stops it."""
        if self._reconnect is None or self.run_id is None or self.done:
            return None
        url = f"{self._base}/runs/{quote(self.run_id, safe='')}/cancel"
        return Request(
            "POST", url, {"Accept": "application/json", **self._auth}, None, httpx.Timeout(CANCEL_TIMEOUT)
        )

    # ------------------------------------------------------------------ bodies

    def _text_feed(self) -> Feed:
        """The raw text body of `/chat`: one incremental UTF-8 decoder, so a character split
        across chunks comes out whole, once. A clean end of the body is the end of the answer."""
        decode = codecs.getincrementaldecoder("utf-8")("replace").decode
        parts = self._parts

        def feed(chunk: bytes) -> list[Any]:
            piece = decode(chunk, not chunk)
            if not chunk:
                self.done = True
            if piece:
                parts.append(piece)
                return [piece]
            return []

        return feed

    def _event_feed(self) -> Feed:
        decoder = SSEDecoder(last_event_id=self.last_event_id or "")

        def feed(chunk: bytes) -> list[Any]:
            frames = decoder.feed(chunk) if chunk else decoder.finish()
            if decoder.retry is not None:
                self._retry_s = decoder.retry / 1000
            return self._take(frames)

        return feed

    def _take(self, frames: list[ServerSentEvent]) -> list[Any]:
        """Events from SSE frames, up to the terminal one; text streams keep answer text only."""
        out: list[Any] = []
        text_only = self._kind == "text"
        for frame in frames:
            if self.done:
                break
            self._received += 1
            self.last_event_id = frame.id or None
            event = _event(frame)
            if type(event) is AnswerDelta:
                text = event.text
                if self._skip:
                    skipped = min(self._skip, len(text))
                    self._skip -= skipped
                    text = text[skipped:]
                    if not text:
                        continue
                self._parts.append(text)
                out.append(text if text_only else event)
            elif isinstance(event, RunFinished | RunError):
                self.done = True
                if not text_only:
                    out.append(event)
                elif isinstance(event, RunError):
                    self._failure = event
            elif event is not None and not text_only:
                out.append(event)
        self._emitted += len(out)
        return out


def _event(frame: ServerSentEvent) -> Event | None:
    """The event a frame carries; None for a type this client does not know (a newer server)."""
    kind = frame.event
    try:
        data = json.loads(frame.data)
    except ValueError:
        raise TokenrelayClientError(f"the server sent a {kind!r} event whose data is not JSON") from None
    if not isinstance(data, dict):
        raise TokenrelayClientError(f"the server sent a {kind!r} event whose data is not a JSON object")
    if kind != "message":  # the SSE event name is the type (events.py)
        data["type"] = kind
    try:
        return event_from_dict(data)
    except ValueError:  # only an unknown type
        return None
    except (TypeError, KeyError, AttributeError):
        raise TokenrelayClientError(f"the server sent a malformed {kind!r} event") from None
