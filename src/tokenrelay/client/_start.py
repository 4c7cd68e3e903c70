"""Starting a stream: the core of a `/chat` (text) or `/chat/events` (typed events) request,
and `StreamInfo`, what both faces tell about their stream while it runs.

Both faces (`_sync.py`, `_async.py`) build their cores here, so the request body, the API key
fallback (`TOKENRELAY_API_KEY`) and the stream's properties are written once."""

from __future__ import annotations

import os
from typing import Any, Literal, TypedDict, Unpack

from tokenrelay.client._core import DEFAULT_TIMEOUT, RECONNECT, Reconnect, StreamCore

__all__ = ["EventOptions", "StreamInfo", "StreamOptions", "events_core", "text_core"]


class StreamOptions(TypedDict, total=False):
    """The options of every stream function, sync or async (each may be left out).

    `session_id`: the conversation to continue (default: a new one). `api_key`: sent as
    `Authorization: Bearer`, default `TOKENRELAY_API_KEY`. `timeout`: how long to wait for the
    next piece, in seconds (default `DEFAULT_TIMEOUT`; None: forever). `reconnect`: how a
    dropped connection is resumed (default `Reconnect()`; None: it is not, and the server
    cancels the run when the connection drops)."""

    session_id: str | None
    api_key: str | None
    timeout: float | None
    reconnect: Reconnect | None


class EventOptions(StreamOptions, total=False):
    """`StreamOptions`, and `mode`: "final" (the answer's events, the default) or "full"
    (also the agent's steps)."""

    mode: Literal["final", "full"]


def text_core(url: str, text: str, **options: Unpack[StreamOptions]) -> StreamCore:
    """The core of a `/chat` stream: answer text."""
    return _core("text", url, _body(text, options.get("session_id")), options)


def events_core(url: str, text: str, **options: Unpack[EventOptions]) -> StreamCore:
    """The core of a `/chat/events` stream: typed events."""
    body = {**_body(text, options.get("session_id")), "mode": options.get("mode", "final")}
    return _core("events", url, body, options)


def _core(
    kind: Literal["text", "events"], url: str, body: dict[str, Any], options: StreamOptions
) -> StreamCore:
    api_key = options.get("api_key")
    return StreamCore(
        kind,
        url,
        body,
        api_key=api_key if api_key is not None else os.environ.get("TOKENRELAY_API_KEY"),
        timeout=options.get("timeout", DEFAULT_TIMEOUT),
        reconnect=options.get("reconnect", RECONNECT),
    )


def _body(text: str, session_id: str | None) -> dict[str, Any]:
    return {"text": text} if session_id is None else {"text": text, "session_id": session_id}


class StreamInfo:
    """What both faces tell about their stream while it runs (from its core)."""

    def __init__(self, core: StreamCore) -> None:
        self._core = core

    @property
    def session_id(self) -> str | None:
        """The session (`X-Session-Id`), once the response has started."""
        return self._core.session_id

    @property
    def run_id(self) -> str | None:
        """The run (`X-Run-Id`), once the response has started."""
        return self._core.run_id

    @property
    def last_event_id(self) -> str | None:
        """The id of the last event received (what a resumption sends as Last-Event-ID)."""
        return self._core.last_event_id

    @property
    def text(self) -> str:
        """The answer text received so far (the answer deltas, narration included, as a
        consumer that shows every delta shows it)."""
        return self._core.text

    @property
    def reconnects(self) -> int:
        """How many times the stream resumed its run after a dropped connection."""
        return self._core.reconnects
