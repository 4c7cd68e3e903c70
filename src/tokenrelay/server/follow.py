"""An ASGI response that follows a run's channel and writes it in one wire format.

Why not Starlette's StreamingResponse: we need a keep-alive that costs nothing per token,
batches (coalescing) when the reader falls behind, a client disconnect that cancels the run
at once (not at the next write), and, for raw text, a failure that ends the body without the
chunked terminator so clients report the stream as incomplete instead of a short answer that
looks whole.

An inline run (started for this response alone) is driven by the response itself through its
`RunDriver`: one task, no wake-up per event. Per request, the state lives in a `_Stream`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import cast

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from tokenrelay.events import Event, RunError
from tokenrelay.runs import RunChannel, RunDriver
from tokenrelay.runs.driver import CANCELLED
from tokenrelay.server.raw_send import RAW_SEND
from tokenrelay.sse import KEEPALIVE, encode_batch

__all__ = ["FollowResponse", "IncompleteStream", "install_log_filter", "sse_response"]

#: encodes a batch of a run's log (the first has index `first_id` in its run) to bytes; a `str`
#: in it is an answer delta's text (`RunChannel.log`)
Encoder = Callable[[Sequence[Event | str], int], bytes]


class IncompleteStream(Exception):
    """Raised after the response started, to make the server drop the connection without
    ending the chunked body: the bundled client (and requests/httpx) then report an
    incomplete read."""


class _DropIncomplete(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, IncompleteStream) and not isinstance(
            getattr(exc, "__cause__", None), IncompleteStream
        )


def install_log_filter() -> None:
    """Keep uvicorn from logging a traceback for the deliberate IncompleteStream."""
    logging.getLogger("uvicorn.error").addFilter(_DropIncomplete())


class FollowResponse(Response):
    """A Starlette `Response` only so frameworks pass it through untouched; it never
    renders a body up front."""

    def __init__(
        self,
        channel: RunChannel,
        encode: Encoder,
        *,
        media_type: str,
        headers: dict[str, str],
        start: int = 0,
        keepalive: bytes | None = None,
        prologue: bytes = b"",
        epilogue: Callable[[Event], bytes] | None = None,
        abort_on_error: bool = False,
        status_code: int = 200,
        cancel_on_disconnect: bool = True,
    ) -> None:
        self.channel = channel
        self.encode = encode
        self.background = None
        self.media_type = media_type
        self.start = start
        self.keepalive = keepalive
        self.prologue = prologue
        self.epilogue = epilogue
        self.abort_on_error = abort_on_error
        self.cancel_on_disconnect = cancel_on_disconnect
        self.status_code = status_code
        raw = {
            "content-type": media_type,
            "cache-control": "no-cache",
            "x-accel-buffering": "no",
            **{k.lower(): v for k, v in headers.items()},
        }
        self.raw_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in raw.items()]
        self.body = b""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The token loop runs in a task of its own, writing its bodies through the server's own
        # `send` (server/raw_send.py): each token then resumes a few frames instead of the whole
        # ASGI stack, and passes no middleware's send wrapper. The head still goes through the
        # framework's `send` (its middlewares note that the response started). Cancelling this
        # task cancels that one.
        raw: Send = scope.get(RAW_SEND, send)
        await asyncio.get_running_loop().create_task(_follow(self, receive, send, raw))


async def _follow(response: FollowResponse, receive: Receive, head_send: Send, send: Send) -> None:
    await _Stream(response, send, head_send).run(receive)


class _Stream:
    """One request following one channel: whether the client left, whether the response is
    complete, and, for an inline run, the driver this response runs it with."""

    __slots__ = (
        "channel", "disconnected", "driver", "finished", "head_send", "pings", "response", "send", "sender",
    )  # fmt: skip

    def __init__(self, response: FollowResponse, send: Send, head_send: Send) -> None:
        self.response = response
        self.send = send
        self.head_send = head_send
        self.channel = channel = response.channel
        self.sender = asyncio.current_task()
        self.disconnected = False
        self.finished = False
        self.pings: set[asyncio.Task[None]] = set()
        channel.follow()
        self.driver = RunDriver.take(channel)  # an inline run: this response drives it
        if self.driver is not None and response.keepalive is not None:
            channel.set_idle_hook(self._idle)

    async def listen(self, receive: Receive) -> None:
        """A client that leaves cancels the sending task at once, not at its next write."""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                if self.finished:  # the response is complete: nothing to interrupt
                    return
                self.disconnected = True
                if self.sender is not None:
                    self.sender.cancel()
                return

    async def run(self, receive: Receive) -> None:
        """Send every event from `start` to the terminal one, batched when behind, then the
        end. The per-token path is this loop alone: locals only, one send per batch."""
        listener = asyncio.create_task(self.listen(receive))
        channel, send, driver = self.channel, self.send, self.driver
        encode, keepalive = self.response.encode, self.response.keepalive
        index = self.response.start
        events = channel.log  # the list it is now: the channel swaps in a compact copy at the end
        step = driver.step if driver is not None else None  # None once the inline run ended
        try:
            await self._start()
            while True:
                try:
                    if index < len(events):
                        batch = events[index:]
                        body = encode(batch, index)
                        index += len(batch)
                        if body:
                            await send({"type": "http.response.body", "body": body, "more_body": True})
                        continue
                    if step is not None:
                        if not await step():
                            step = None
                        continue
                    ticked = await channel.next_event(index)  # False: an event came, or the run is done
                    if len(events) > index:
                        continue
                    if not ticked:
                        break
                    if keepalive is not None and not channel.done:
                        await send({"type": "http.response.body", "body": keepalive, "more_body": True})
                except asyncio.CancelledError:
                    if self.disconnected or driver is None or channel.done:
                        raise
                    # a cancel request for the inline run this response drives: the run ends
                    # with an error event, which this response still sends
                    _uncancel()
                    await driver.stop(CANCELLED)
                    step = None
            await self._end(cast(Event, events[-1]))  # (the terminal event: never text)
        except asyncio.CancelledError:
            if not self.disconnected:
                raise
            _uncancel()  # the client left: on to cleanup; nothing more can be sent
        except OSError:  # the socket broke under a write
            self.disconnected = True
        finally:
            listener.cancel()
            await self._close()

    async def _start(self) -> None:
        response = self.response
        await self.head_send({"type": "http.response.start", "status": response.status_code,
                              "headers": response.raw_headers})  # fmt: skip
        if response.prologue:
            await self.send({"type": "http.response.body", "body": response.prologue, "more_body": True})

    async def _end(self, last: Event) -> None:
        response = self.response
        if response.abort_on_error and isinstance(last, RunError):
            raise IncompleteStream(last.message)
        tail = response.epilogue(last) if response.epilogue is not None else b""
        self.finished = True
        await self.send({"type": "http.response.body", "body": tail, "more_body": False})

    async def _close(self) -> None:
        self.finished = True
        channel = self.channel
        channel.unfollow()
        if self.driver is not None:
            channel.set_idle_hook(None)
            await self.driver.leave()  # ends the run if the client left before it did
        elif (
            self.disconnected
            and self.response.cancel_on_disconnect
            and channel.followers == 0
            and not channel.detached
        ):
            channel.cancel()

    def _idle(self) -> None:
        """An inline run's keep-alive: nothing was published since the last registry tick."""
        task = asyncio.create_task(self._ping())
        self.pings.add(task)
        task.add_done_callback(self.pings.discard)

    async def _ping(self) -> None:
        keepalive = self.response.keepalive
        if not self.finished and keepalive is not None:
            await self.send({"type": "http.response.body", "body": keepalive, "more_body": True})


def _uncancel() -> None:
    current = asyncio.current_task()
    if current is not None:
        current.uncancel()


def sse_response(
    channel: RunChannel, headers: dict[str, str], start: int = 0, *, detached: bool = False
) -> FollowResponse:
    """Typed SSE of every event from index `start` (`id:` is the index). A `detached` follower
    (a resume) never cancels the run when its client leaves."""
    return FollowResponse(
        channel,
        encode_batch,
        media_type="text/event-stream; charset=utf-8",
        headers=headers,
        start=start,
        keepalive=KEEPALIVE,
        cancel_on_disconnect=not detached,
    )
