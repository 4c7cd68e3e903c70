"""The bundled Python client for a tokenrelay server: raw text (`/chat`) and typed events
(`/chat/events`), sync and async, plus the `tokenrelay stream` command.

    for piece in stream_text("http://localhost:8000", "What is 2**10?"):
        print(piece, end="", flush=True)

    async for event in astream_events(url, "What is 2**10?", mode="full"):
        if isinstance(event, AnswerDelta): ...

One core (`_core.py`: requests, error statuses, incremental UTF-8, SSE, resuming) and two thin
faces that carry it out with httpx: `Stream` (sync) and `AsyncStream` (async). Text streams
yield `str`, event streams `tokenrelay.events.Event` objects.

Invariants:

* text comes out exactly as the server sent it: bytes are decoded with one incremental UTF-8
  decoder per response, so a character split across network chunks is yielded whole, once;
* a dropped connection (a read error, a stall, a body that ends before the run did) is resumed
  as a browser's EventSource does: `GET /runs/{run_id}/events` with `Last-Event-ID`, after the
  server's `retry:` or `Reconnect.delay` with backoff; the caller gets every event (every
  character of text) once, in order, as if nothing had happened. To make that possible the
  streams start their run with `"resumable": true` (unless `reconnect=None`), and a stream left
  before the end (closed, `break` + `with`, Ctrl-C) cancels its run (`POST /runs/{id}/cancel`);
* a stream either ends properly or raises: an answer that cannot be completed (resuming is off
  or fails `Reconnect.attempts` times in a row, or a `/chat` run fails) raises
  `IncompleteStreamError` carrying exactly the text yielded so far, never a short answer that
  looks complete. An event stream ends with `RunFinished` or `RunError`;
* an HTTP error status raises `TokenrelayHTTPError(status, message)` with the server's own
  message (`{"error": {"message": ...}}`); a server that cannot be reached, or a bad URL,
  raises `TokenrelayConnectionError`. All derive from `TokenrelayClientError` (itself a
  `tokenrelay.errors.TokenrelayError`), and their `str()` is one line meant for people;
* the API key is `api_key`, else the `TOKENRELAY_API_KEY` environment variable; it is sent as
  `Authorization: Bearer <key>` and never appears in an error message;
* SSE is parsed as the HTML standard says (`tokenrelay.sse`): lines end at CR, LF or CRLF only,
  comments (keep-alives) are skipped; event types this client does not know are skipped;
* streams start lazily (at the first `next`) and release their connection when exhausted,
  closed (`close()`/`aclose()`, `with`/`async with`) or, for sync streams, dropped.
"""

from __future__ import annotations

from tokenrelay.client._async import AsyncStream, astream_events, astream_text
from tokenrelay.client._cli import stream_cli
from tokenrelay.client._core import DEFAULT_TIMEOUT, Reconnect
from tokenrelay.client._errors import (
    IncompleteStreamError,
    TokenrelayClientError,
    TokenrelayConnectionError,
    TokenrelayHTTPError,
)
from tokenrelay.client._sync import Stream, stream_events, stream_text

__all__ = [
    "AsyncStream",
    "DEFAULT_TIMEOUT",
    "IncompleteStreamError",
    "Reconnect",
    "Stream",
    "TokenrelayClientError",
    "TokenrelayConnectionError",
    "TokenrelayHTTPError",
    "astream_events",
    "astream_text",
    "stream_cli",
    "stream_events",
    "stream_text",
]
