"""The async face: carries out a core's plan with `httpx.AsyncClient`."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from types import TracebackType
from typing import Any, Self, TypeVar, Unpack

import anyio
import httpx

from tokenrelay.client import _start
from tokenrelay.client._core import StreamCore
from tokenrelay.client._ops import TRANSPORT_ERRORS, Close, Emit, Open, Read, Steps
from tokenrelay.client._start import EventOptions, StreamOptions
from tokenrelay.events import Event

__all__ = ["AsyncStream", "astream_events", "astream_text"]

T = TypeVar("T")


class AsyncStream(_start.StreamInfo, AsyncIterator[T]):
    """`Stream` for async code: `async for piece in astream_text(url, text)`. End it early
    with `aclose()` or `async with`; that also cancels the run if it is still going."""

    def __init__(self, core: StreamCore, client: httpx.AsyncClient | None = None) -> None:
        super().__init__(core)
        self._gen: AsyncGenerator[T, None] = _run(core, client)

    async def __anext__(self) -> T:
        return await anext(self._gen)

    def __aiter__(self) -> Self:
        return self

    async def aclose(self) -> None:
        """Stop reading, release the connection, and cancel the run if it is still going."""
        await self._gen.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


async def _run(core: StreamCore, client: httpx.AsyncClient | None) -> AsyncGenerator[Any, None]:
    http = httpx.AsyncClient() if client is None else client
    steps = Steps(core.plan())
    response: httpx.Response | None = None
    chunks: AsyncIterator[bytes] | None = None
    try:
        while (op := steps.next()) is not None:
            if isinstance(op, Emit):
                for item in op.items:
                    yield item
                continue
            try:
                if isinstance(op, Read):
                    steps.reply = b"" if chunks is None else await anext(chunks, b"")
                elif isinstance(op, Open):
                    response = await http.send(op.request.build(http), stream=True)
                    chunks = response.aiter_bytes()
                    steps.reply = response
                elif isinstance(op, Close):
                    if response is not None:
                        await response.aclose()
                        response = chunks = None
                elif op.seconds > 0:
                    await anyio.sleep(op.seconds)
            except TRANSPORT_ERRORS as exc:
                steps.error = exc
    finally:
        steps.close()
        if response is not None:
            await response.aclose()
        cancel = core.cancel_request()
        if cancel is not None:
            with contextlib.suppress(*TRANSPORT_ERRORS):
                await (await http.send(cancel.build(http))).aclose()
        if client is None:
            await http.aclose()


def astream_text(
    url: str, text: str, *, client: httpx.AsyncClient | None = None, **options: Unpack[StreamOptions]
) -> AsyncStream[str]:
    """`stream_text` for async code."""
    return AsyncStream[str](_start.text_core(url, text, **options), client)


def astream_events(
    url: str, text: str, *, client: httpx.AsyncClient | None = None, **options: Unpack[EventOptions]
) -> AsyncStream[Event]:
    """`stream_events` for async code."""
    return AsyncStream[Event](_start.events_core(url, text, **options), client)
