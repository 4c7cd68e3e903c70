"""An ASGI response that follows a run's channel and writes it in one wire format.

Why not Starlette's StreamingResponse: we need a keep-alive that costs nothing per token,
batches (coalescing) when the reader falls behind, a client disconnect that cancels the run
at once (not at the next write), and, for raw text, a failure that ends the body without the
chunked terminator so clients report the stream as incomplete instead of a short answer that
looks whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence

from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from tokenrelay.events import Event, RunError
from tokenrelay.server.raw_send import RAW_SEND
from tokenrelay.server.runs import RunChannel, answer_so_far

__all__ = ["FollowResponse", "IncompleteStream", "install_log_filter"]

#: encodes a batch of events (the first has index `first_id` in its run) to bytes
Encoder = Callable[[Sequence[Event], int], bytes]


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
        self._pings: set[asyncio.Task[None]] = set()
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
        # The head goes through the framework's `send` (its middlewares note that the response
        # started); the token loop runs in a task of its own, writing through the server's own
        # `send`: each token then resumes a few frames instead of the whole ASGI stack, and
        # passes no middleware's send wrapper. Cancelling this task cancels that one.
        raw: Send = scope.get(RAW_SEND, send)
        await asyncio.get_running_loop().create_task(self._follow(receive, send, raw))

    async def _follow(self, receive: Receive, framework_send: Send, send: Send) -> None:
        channel = self.channel
        channel.follow()
        sender = asyncio.current_task()
        disconnected = False
        finished = False
        source = channel.source
        if source is not None:  # an inline run: this response drives it (one task, not two)
            channel.source = None
            channel.task = sender
            keepalive = self.keepalive
            if keepalive is not None:

                async def ping() -> None:
                    if not finished:
                        await send({"type": "http.response.body", "body": keepalive, "more_body": True})

                def idle() -> None:
                    task = asyncio.create_task(ping())
                    self._pings.add(task)
                    task.add_done_callback(self._pings.discard)

                channel.on_idle = idle

        async def listen() -> None:
            nonlocal disconnected
            while True:
                message: Message = await receive()
                if message["type"] == "http.disconnect":
                    if finished:  # the response is complete: nothing to interrupt
                        return
                    disconnected = True
                    if sender is not None:
                        sender.cancel()
                    return

        listener = asyncio.create_task(listen())
        try:
            await framework_send(
                {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
            )
            if self.prologue:
                await send({"type": "http.response.body", "body": self.prologue, "more_body": True})
            index = self.start
            events = channel.events
            while True:
                try:
                    if index < len(events):
                        batch = events[index:]
                        body = self.encode(batch, index)
                        index += len(batch)
                        if body:
                            await send({"type": "http.response.body", "body": body, "more_body": True})
                        continue
                    if channel.done:
                        break
                    if source is not None:
                        await self._drive(source, channel)
                        continue
                    ticked = await channel.next_event(index)
                    if ticked and self.keepalive is not None and len(events) == index and not channel.done:
                        await send({"type": "http.response.body", "body": self.keepalive, "more_body": True})
                except asyncio.CancelledError:
                    if disconnected or source is None or channel.done:
                        raise
                    # a cancel request for the inline run this response drives: end it with an
                    # error event, which this response still sends
                    current = asyncio.current_task()
                    if current is not None:
                        current.uncancel()
                    await _close(source)
                    channel.publish(
                        RunError(
                            message="the run was cancelled", code="cancelled", answer=answer_so_far(channel)
                        )
                    )
            last = events[-1]
            if self.abort_on_error and isinstance(last, RunError):
                raise IncompleteStream(last.message)
            tail = self.epilogue(last) if self.epilogue is not None else b""
            finished = True
            await send({"type": "http.response.body", "body": tail, "more_body": False})
        except asyncio.CancelledError:
            if not disconnected:
                raise
            # the client left: fall through to cleanup; nothing more can be sent
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
        except OSError:  # the socket broke under a write
            disconnected = True
        finally:
            finished = True
            listener.cancel()
            channel.unfollow()
            channel.on_idle = None
            if source is not None and channel.task is sender:
                channel.task = None  # the request's task outlives this run: never cancel it later
            if source is not None:
                if not channel.done:  # the client left while this response drove the run
                    await _close(source)
                    channel.publish(
                        RunError(
                            message="the client disconnected", code="cancelled", answer=answer_so_far(channel)
                        )
                    )
            elif (
                disconnected and self.cancel_on_disconnect and channel.followers == 0 and not channel.detached
            ):
                channel.cancel()

    async def _drive(self, source: AsyncIterator[Event], channel: RunChannel) -> None:
        """Advance an inline run by one event (cancellation is the caller's to handle)."""
        try:
            event = await anext(source)
        except StopAsyncIteration:
            channel.publish(RunError(message="the run ended without a result", code="internal"))
            return
        except Exception as exc:  # the agent turns failures into events; a last resort
            channel.publish(RunError(message=f"internal error: {type(exc).__name__}", code="internal"))
            return
        channel.publish(event)
        if channel.over_limit:
            await channel.stop_over_limit(source)


async def _close(source: AsyncIterator[Event]) -> None:
    """Close a run's generator: its cleanup stores the turn as interrupted."""
    aclose = getattr(source, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(Exception):
            await aclose()
