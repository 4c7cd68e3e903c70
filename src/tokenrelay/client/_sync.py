"""The sync face: carries out a core's plan with `httpx.Client` (blocking reads and sleeps)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Generator, Iterator
from types import TracebackType
from typing import Any, Self, TypeVar, Unpack

import httpx

from tokenrelay.client import _start
from tokenrelay.client._core import StreamCore
from tokenrelay.client._ops import TRANSPORT_ERRORS, Close, Emit, Open, Read, Steps
from tokenrelay.client._start import EventOptions, StreamOptions
from tokenrelay.events import Event

__all__ = ["Stream", "stream_events", "stream_text"]

T = TypeVar("T")


class Stream(_start.StreamInfo, Iterator[T]):
    """One answer as it arrives: `str` pieces (`stream_text`) or `Event`s (`stream_events`).

    It starts at the first `next`, resumes its run by itself after a dropped connection, and
    releases its connection when exhausted, closed (`close()`, `with`) or dropped. Left before
    the end, it cancels the run on the server."""

    def __init__(self, core: StreamCore, client: httpx.Client | None = None) -> None:
        super().__init__(core)
        self._gen: Generator[T, None, None] = _run(core, client)

    def __next__(self) -> T:
        return next(self._gen)

    def __iter__(self) -> Self:
        return self

    def close(self) -> None:
        """Stop reading, release the connection, and cancel the run if it is still going."""
        self._gen.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _run(core: StreamCore, client: httpx.Client | None) -> Generator[Any, None, None]:
    http = httpx.Client() if client is None else client
    steps = Steps(core.plan())
    response: httpx.Response | None = None
    chunks: Iterator[bytes] = iter(())
    try:
        while (op := steps.next()) is not None:
            if isinstance(op, Emit):
                yield from op.items
                continue
            try:
                if isinstance(op, Read):
                    steps.reply = next(chunks, b"")
                elif isinstance(op, Open):
                    response = http.send(op.request.build(http), stream=True)
                    chunks = response.iter_bytes()
                    steps.reply = response
                elif isinstance(op, Close):
                    if response is not None:
                        response.close()
                        response = None
                elif op.seconds > 0:
                    time.sleep(op.seconds)
            except TRANSPORT_ERRORS as exc:
                steps.error = exc
    finally:
        steps.close()
        if response is not None:
            response.close()
        cancel = core.cancel_request()
        if cancel is not None:
            with contextlib.suppress(*TRANSPORT_ERRORS):
                http.send(cancel.build(http)).close()
        if client is None:
            http.close()


def stream_text(
    url: str, text: str, *, client: httpx.Client | None = None, **options: Unpack[StreamOptions]
) -> Stream[str]:
    """Stream the final answer to `text` from the server at `url` (its base URL), as text.

    `options` (`StreamOptions`): `session_id`, `api_key`, `timeout` (how long to wait for the
    next piece; None: forever) and `reconnect` (how a dropped connection is resumed; None: it
    is not, and the server cancels the run when the connection drops). Raises `IncompleteStreamError` (with
    `.partial_text`) when the answer cannot be completed, `TokenrelayHTTPError` for an error
    status, `TokenrelayConnectionError` when the server cannot be reached. Pass `client` to
    reuse connections."""
    return Stream[str](_start.text_core(url, text, **options), client)


def stream_events(
    url: str, text: str, *, client: httpx.Client | None = None, **options: Unpack[EventOptions]
) -> Stream[Event]:
    """Stream a run's typed events (`tokenrelay.events`) from `/chat/events`. The last one is
    `RunFinished` or `RunError`; an answer that cannot be completed (even by resuming) raises
    `IncompleteStreamError`. Event types this client does not know are skipped. `options`:
    those of `stream_text`, and `mode` ("final" or "full": also the agent's steps)."""
    return Stream[Event](_start.events_core(url, text, **options), client)
