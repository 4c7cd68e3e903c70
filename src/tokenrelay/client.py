"""The bundled Python client for a tokenrelay server: raw text (`/chat`) and typed SSE
(`/chat/events`), sync and async, plus the `tokenrelay stream` command.

    for piece in stream_text("http://localhost:8000", "What is 2**10?"):
        print(piece, end="", flush=True)

This is the fix for the tutorial's client, which decodes each network chunk on its own
(`chunk.decode("utf-8")`) and so crashes (or garbles text) as soon as a multi-byte character
such as Japanese is split between two chunks.

Invariants:

* text comes out exactly as the server sent it: bytes are decoded with one incremental UTF-8
  decoder per response, so a character split across network chunks is yielded whole, once;
* a stream either ends properly or raises: a body that ends without its proper termination
  (the server drops the connection, as `/chat` does when the run fails mid-answer; a read
  times out) raises `IncompleteStreamError` carrying the text received so far, never a short
  answer that looks complete. For `/chat/events` the stream must end with a `run_finished`
  or `error` event;
* an HTTP error status raises `TokenrelayHTTPError(status, message)` with the server's own
  message (`{"error": {"message": ...}}`); a server that cannot be reached, or a bad URL,
  raises `TokenrelayConnectionError`. All three derive from `TokenrelayClientError` (itself a
  `tokenrelay.errors.TokenrelayError`), and their `str()` is one line meant for people;
* the API key is `api_key`, else the `TOKENRELAY_API_KEY` environment variable; it is sent as
  `Authorization: Bearer <key>` and never appears in an error message;
* SSE is parsed as the HTML standard says: lines end at CR, LF or CRLF only (not at the other
  characters `str.splitlines` knows), comments (keep-alives) are skipped;
* streams start lazily (at the first `next`) and release their connection when exhausted,
  closed (`close()`/`aclose()`, `with`/`async with`) or, for sync streams, dropped.
"""

from __future__ import annotations

import codecs
import json
import os
import re
import sys
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterator
from contextlib import closing
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Self, TextIO, TypeVar

import httpx

from tokenrelay.errors import TokenrelayError

__all__ = [
    "DEFAULT_TIMEOUT",
    "AsyncEventStream",
    "AsyncTextStream",
    "EventStream",
    "IncompleteStreamError",
    "TextStream",
    "TokenrelayClientError",
    "TokenrelayConnectionError",
    "TokenrelayHTTPError",
    "astream_events",
    "astream_text",
    "stream_cli",
    "stream_events",
    "stream_text",
]

#: seconds to wait for the next piece of a stream (a model may think for a while)
DEFAULT_TIMEOUT = 300.0
CONNECT_TIMEOUT = 10.0
INCOMPLETE_MESSAGE = "the stream ended before the answer was complete"
TERMINAL_EVENTS = frozenset({"run_finished", "error"})
_ERROR_BODY_LIMIT = 64 * 1024


# --------------------------------------------------------------------------- errors


class TokenrelayClientError(TokenrelayError):
    """Base of the client's errors."""


class TokenrelayHTTPError(TokenrelayClientError):
    """The server answered with an HTTP error status (4xx/5xx)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class IncompleteStreamError(TokenrelayClientError):
    """The stream ended (or stalled) before the answer was complete; `partial_text` is the
    answer text received until then."""

    def __init__(self, partial_text: str, message: str = INCOMPLETE_MESSAGE) -> None:
        super().__init__(message)
        self.partial_text = partial_text


class TokenrelayConnectionError(TokenrelayClientError):
    """The server could not be reached (or the URL is not usable)."""


# --------------------------------------------------------------------------- sans-IO parts


def _endpoint(url: str, path: str) -> str:
    """`url` is the server's base URL; an URL that already ends with `path` is kept."""
    base = url.strip().rstrip("/")
    return base if base.endswith(path) else base + path


def _headers(api_key: str | None, accept: str) -> dict[str, str]:
    key = api_key if api_key is not None else os.environ.get("TOKENRELAY_API_KEY")
    headers = {"Accept": accept}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return headers


def _body(text: str, session_id: str | None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"text": text, **extra}
    if session_id is not None:
        body["session_id"] = session_id
    return body


def _timeout(timeout: float | None) -> httpx.Timeout:
    connect = CONNECT_TIMEOUT if timeout is None else min(CONNECT_TIMEOUT, timeout)
    return httpx.Timeout(timeout, connect=connect)


@dataclass(frozen=True, slots=True)
class _Call:
    """One streaming POST: where, what, and how long to wait for each read."""

    url: str
    body: dict[str, Any]
    headers: dict[str, str]
    read_timeout: float | None


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _http_error(status: int, reason: str, body: bytes) -> TokenrelayHTTPError:
    message = ""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            message = error["message"]
        elif isinstance(error, str):
            message = error
        elif isinstance(data.get("detail"), str):
            message = data["detail"]
    if not message:
        message = body[:200].decode("utf-8", "replace").strip() or reason or "error"
    return TokenrelayHTTPError(status, _one_line(message))


def _connection_error(url: str, exc: Exception) -> TokenrelayConnectionError:
    if isinstance(exc, httpx.InvalidURL | httpx.UnsupportedProtocol):
        return TokenrelayConnectionError(f"invalid server URL {url!r}: {_one_line(str(exc))}")
    if isinstance(exc, httpx.TimeoutException):
        return TokenrelayConnectionError(f"the server at {url} did not answer in time")
    detail = _one_line(str(exc)) or type(exc).__name__
    return TokenrelayConnectionError(f"cannot reach the server at {url}: {detail}")


def _stalled(partial: str, timeout: float | None) -> IncompleteStreamError:
    return IncompleteStreamError(partial, f"the server sent nothing for {timeout} s; {INCOMPLETE_MESSAGE}")


class _Utf8:
    """One incremental UTF-8 decoder per response."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def feed(self, data: bytes) -> str:
        return self._decoder.decode(data)

    def finish(self) -> str:
        return self._decoder.decode(b"", final=True)


_LINE_END = re.compile(r"\r\n|\r|\n")


class _SSEParser:
    """Incremental `text/event-stream` parser: bytes in, (event, data) out; `last_id` is kept."""

    def __init__(self) -> None:
        self._utf8 = _Utf8()
        self._pending = ""
        self._event = ""
        self._data: list[str] = []
        self.last_id: str | None = None

    def feed(self, data: bytes) -> list[tuple[str, str]]:
        text = self._pending + self._utf8.feed(data)
        hold_cr = text.endswith("\r")  # maybe the first half of a CRLF
        if hold_cr:
            text = text[:-1]
        lines = _LINE_END.split(text)
        self._pending = lines.pop() + ("\r" if hold_cr else "")
        out: list[tuple[str, str]] = []
        for line in lines:
            event = self._line(line)
            if event is not None:
                out.append(event)
        return out

    def finish(self) -> list[tuple[str, str]]:
        """At the end of the body. A held CR still ends its line; an event without the blank
        line that ends it is dropped (as the standard says)."""
        text, self._pending = self._pending + self._utf8.finish(), ""
        if text.endswith("\r"):
            event = self._line(text[:-1])
            return [event] if event is not None else []
        return []

    def _line(self, line: str) -> tuple[str, str] | None:
        if not line:
            if not self._data:
                self._event = ""
                return None
            event = (self._event or "message", "\n".join(self._data))
            self._event, self._data = "", []
            return event
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\x00" not in value:
            self.last_id = value
        return None


def _event_dict(event: str, data: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except ValueError:
        raise TokenrelayClientError(f"the server sent a {event!r} event whose data is not JSON") from None
    if not isinstance(value, dict):
        raise TokenrelayClientError(f"the server sent a {event!r} event whose data is not a JSON object")
    return value


class _EventTracker:
    """Turns SSE frames into (type, data) and keeps what `IncompleteStreamError` needs."""

    def __init__(self) -> None:
        self.parser = _SSEParser()
        self.answer: list[str] = []
        self.finished = False

    def feed(self, data: bytes) -> list[tuple[str, dict[str, Any]]]:
        return self._take(self.parser.feed(data))

    def finish(self) -> list[tuple[str, dict[str, Any]]]:
        return self._take(self.parser.finish())

    def _take(self, frames: list[tuple[str, str]]) -> list[tuple[str, dict[str, Any]]]:
        out: list[tuple[str, dict[str, Any]]] = []
        for event, raw in frames:
            if self.finished:
                break
            payload = _event_dict(event, raw)
            if event == "answer_delta" and isinstance(payload.get("text"), str):
                self.answer.append(payload["text"])
            if event in TERMINAL_EVENTS:
                self.finished = True
            out.append((event, payload))
        return out

    @property
    def partial(self) -> str:
        return "".join(self.answer)


# --------------------------------------------------------------------------- sync streams


def _sync_bytes(
    call: _Call,
    client: httpx.Client | None,
    started: Callable[[httpx.Response], None],
    partial: Callable[[], str],
) -> Generator[bytes, None, None]:
    """POST `call` and yield the response body's chunks, with errors translated."""
    http = httpx.Client() if client is None else client
    try:
        try:
            context = http.stream(
                "POST", call.url, json=call.body, headers=call.headers, timeout=_timeout(call.read_timeout)
            )
            response = context.__enter__()
        except (httpx.TransportError, httpx.InvalidURL) as exc:
            raise _connection_error(call.url, exc) from None
        try:
            if response.status_code >= 400:
                error_body = b""
                try:
                    for chunk in response.iter_bytes():
                        error_body += chunk
                        if len(error_body) >= _ERROR_BODY_LIMIT:
                            break
                except httpx.TransportError:
                    pass
                raise _http_error(response.status_code, response.reason_phrase, error_body)
            started(response)
            try:
                yield from response.iter_bytes()
            except httpx.TimeoutException:
                raise _stalled(partial(), call.read_timeout) from None
            except httpx.TransportError:
                raise IncompleteStreamError(partial()) from None
        finally:
            context.__exit__(None, None, None)
    finally:
        if client is None:
            http.close()


T = TypeVar("T")


class _SyncStream(Iterator[T]):
    """Shared plumbing of the sync streams: lazy start, close, context manager."""

    def __init__(self) -> None:
        #: from the response headers, once it has started
        self.session_id: str | None = None
        self.run_id: str | None = None

    def _started(self, response: httpx.Response) -> None:
        self.session_id = response.headers.get("x-session-id")
        self.run_id = response.headers.get("x-run-id")

    def close(self) -> None:
        """Stop reading and release the connection (the server then stops the run)."""
        self._gen.close()

    _gen: Generator[T, None, None]

    def __next__(self) -> T:
        return next(self._gen)

    def __iter__(self) -> Self:
        return self

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class TextStream(_SyncStream[str]):
    """The answer of one `/chat` request, piece by piece (see `stream_text`)."""

    def __init__(self, call: _Call, client: httpx.Client | None) -> None:
        super().__init__()
        self._parts: list[str] = []
        self._gen = self._run(call, client)

    @property
    def text(self) -> str:
        """The text received so far."""
        return "".join(self._parts)

    def _run(self, call: _Call, client: httpx.Client | None) -> Generator[str, None, None]:
        utf8 = _Utf8()
        with closing(_sync_bytes(call, client, self._started, lambda: self.text + utf8.finish())) as chunks:
            for chunk in chunks:
                piece = utf8.feed(chunk)
                if piece:
                    self._parts.append(piece)
                    yield piece
        tail = utf8.finish()
        if tail:
            self._parts.append(tail)
            yield tail


class EventStream(_SyncStream[tuple[str, dict[str, Any]]]):
    """The typed events of one `/chat/events` request (see `stream_events`)."""

    def __init__(self, call: _Call, client: httpx.Client | None) -> None:
        super().__init__()
        self._tracker = _EventTracker()
        self._gen = self._run(call, client)

    @property
    def last_event_id(self) -> str | None:
        """The `id:` of the last event received (for resuming with GET /runs/{id}/events)."""
        return self._tracker.parser.last_id

    def _run(
        self, call: _Call, client: httpx.Client | None
    ) -> Generator[tuple[str, dict[str, Any]], None, None]:
        tracker = self._tracker
        with closing(_sync_bytes(call, client, self._started, lambda: tracker.partial)) as chunks:
            for chunk in chunks:
                yield from tracker.feed(chunk)
                if tracker.finished:
                    return
        yield from tracker.finish()
        if not tracker.finished:
            raise IncompleteStreamError(tracker.partial)


def _text_call(
    url: str, text: str, session_id: str | None, api_key: str | None, timeout: float | None
) -> _Call:
    return _Call(_endpoint(url, "/chat"), _body(text, session_id), _headers(api_key, "text/plain"), timeout)


def _events_call(
    url: str, text: str, session_id: str | None, api_key: str | None, timeout: float | None, mode: str
) -> _Call:
    headers = _headers(api_key, "text/event-stream")
    return _Call(_endpoint(url, "/chat/events"), _body(text, session_id, mode=mode), headers, timeout)


def stream_text(
    url: str,
    text: str,
    *,
    session_id: str | None = None,
    api_key: str | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
    client: httpx.Client | None = None,
) -> TextStream:
    """Stream the final answer to `text` from the server at `url` (its base URL), as text.

    `timeout` is how long to wait for the next piece (None: forever). Raises
    `IncompleteStreamError` (with `.partial_text`) when the body ends without proper
    termination, `TokenrelayHTTPError` for an error status, `TokenrelayConnectionError` when
    the server cannot be reached. Pass `client` to reuse connections."""
    return TextStream(_text_call(url, text, session_id, api_key, timeout), client)


def stream_events(
    url: str,
    text: str,
    *,
    session_id: str | None = None,
    api_key: str | None = None,
    mode: Literal["final", "full"] = "final",
    timeout: float | None = DEFAULT_TIMEOUT,
    client: httpx.Client | None = None,
) -> EventStream:
    """Stream a run's typed events, `(event_type, data)`, from `/chat/events`. The last one is
    `run_finished` or `error`; a stream that ends before raises `IncompleteStreamError`."""
    return EventStream(_events_call(url, text, session_id, api_key, timeout, mode), client)


# --------------------------------------------------------------------------- async streams


async def _async_bytes(
    call: _Call,
    client: httpx.AsyncClient | None,
    started: Callable[[httpx.Response], None],
    partial: Callable[[], str],
) -> AsyncGenerator[bytes, None]:
    http = httpx.AsyncClient() if client is None else client
    try:
        try:
            context = http.stream(
                "POST", call.url, json=call.body, headers=call.headers, timeout=_timeout(call.read_timeout)
            )
            response = await context.__aenter__()
        except (httpx.TransportError, httpx.InvalidURL) as exc:
            raise _connection_error(call.url, exc) from None
        try:
            if response.status_code >= 400:
                error_body = b""
                try:
                    async for chunk in response.aiter_bytes():
                        error_body += chunk
                        if len(error_body) >= _ERROR_BODY_LIMIT:
                            break
                except httpx.TransportError:
                    pass
                raise _http_error(response.status_code, response.reason_phrase, error_body)
            started(response)
            try:
                async for chunk in response.aiter_bytes():
                    yield chunk
            except httpx.TimeoutException:
                raise _stalled(partial(), call.read_timeout) from None
            except httpx.TransportError:
                raise IncompleteStreamError(partial()) from None
        finally:
            await context.__aexit__(None, None, None)
    finally:
        if client is None:
            await http.aclose()


class _AsyncStream(AsyncIterator[T]):
    """Shared plumbing of the async streams."""

    def __init__(self) -> None:
        self.session_id: str | None = None
        self.run_id: str | None = None

    _gen: AsyncGenerator[T, None]

    async def __anext__(self) -> T:
        return await self._gen.__anext__()

    def __aiter__(self) -> Self:
        return self

    async def __aenter__(self) -> Self:
        return self

    def _started(self, response: httpx.Response) -> None:
        self.session_id = response.headers.get("x-session-id")
        self.run_id = response.headers.get("x-run-id")

    async def aclose(self) -> None:
        """Stop reading and release the connection (the server then stops the run)."""
        await self._gen.aclose()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class AsyncTextStream(_AsyncStream[str]):
    """The async twin of `TextStream`; end it early with `aclose()` or `async with`."""

    def __init__(self, call: _Call, client: httpx.AsyncClient | None) -> None:
        super().__init__()
        self._parts: list[str] = []
        self._gen = self._run(call, client)

    @property
    def text(self) -> str:
        """The text received so far."""
        return "".join(self._parts)

    async def _run(self, call: _Call, client: httpx.AsyncClient | None) -> AsyncGenerator[str, None]:
        utf8 = _Utf8()
        chunks = _async_bytes(call, client, self._started, lambda: self.text + utf8.finish())
        try:
            async for chunk in chunks:
                piece = utf8.feed(chunk)
                if piece:
                    self._parts.append(piece)
                    yield piece
        finally:
            await chunks.aclose()
        tail = utf8.finish()
        if tail:
            self._parts.append(tail)
            yield tail


class AsyncEventStream(_AsyncStream[tuple[str, dict[str, Any]]]):
    """The async twin of `EventStream`."""

    def __init__(self, call: _Call, client: httpx.AsyncClient | None) -> None:
        super().__init__()
        self._tracker = _EventTracker()
        self._gen = self._run(call, client)

    @property
    def last_event_id(self) -> str | None:
        return self._tracker.parser.last_id

    async def _run(
        self, call: _Call, client: httpx.AsyncClient | None
    ) -> AsyncGenerator[tuple[str, dict[str, Any]], None]:
        tracker = self._tracker
        chunks = _async_bytes(call, client, self._started, lambda: tracker.partial)
        try:
            async for chunk in chunks:
                for item in tracker.feed(chunk):
                    yield item
                if tracker.finished:
                    return
        finally:
            await chunks.aclose()
        for item in tracker.finish():
            yield item
        if not tracker.finished:
            raise IncompleteStreamError(tracker.partial)


def astream_text(
    url: str,
    text: str,
    *,
    session_id: str | None = None,
    api_key: str | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
    client: httpx.AsyncClient | None = None,
) -> AsyncTextStream:
    """`stream_text` for async code: `async for piece in astream_text(url, text)`."""
    return AsyncTextStream(_text_call(url, text, session_id, api_key, timeout), client)


def astream_events(
    url: str,
    text: str,
    *,
    session_id: str | None = None,
    api_key: str | None = None,
    mode: Literal["final", "full"] = "final",
    timeout: float | None = DEFAULT_TIMEOUT,
    client: httpx.AsyncClient | None = None,
) -> AsyncEventStream:
    """`stream_events` for async code."""
    return AsyncEventStream(_events_call(url, text, session_id, api_key, timeout, mode), client)


# --------------------------------------------------------------------------- the command


def _write(out: TextIO, text: str) -> None:
    try:
        out.write(text)
    except UnicodeEncodeError:  # a terminal that cannot show every character
        encoding = getattr(out, "encoding", None) or "ascii"
        out.write(text.encode(encoding, "replace").decode(encoding, "replace"))
    out.flush()


def stream_cli(
    url: str,
    prompt: str,
    *,
    session_id: str | None = None,
    api_key: str | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """`tokenrelay stream`: print the answer as it arrives (flushed per piece) and a newline;
    errors are one line on stderr and exit status 1 (130 for Ctrl-C). `prompt` '-' reads
    standard input."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    wrote = False

    def fail(message: str, status: int = 1) -> int:
        if wrote:
            _write(out, "\n")
        print(f"tokenrelay: {message}", file=err, flush=True)
        return status

    try:
        if prompt == "-":
            prompt = sys.stdin.read()
        if not prompt.strip():
            return fail("error: the prompt is empty")
        with stream_text(url, prompt, session_id=session_id, api_key=api_key, timeout=timeout) as stream:
            for piece in stream:
                _write(out, piece)
                wrote = True
        _write(out, "\n")
        return 0
    except TokenrelayClientError as exc:
        return fail(f"error: {exc}")
    except KeyboardInterrupt:
        return fail("interrupted", 130)
    except BrokenPipeError:
        # the reader went away (`| head`): stop quietly, and keep Python from complaining at exit
        if out is sys.stdout:
            try:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
            except (OSError, ValueError):
                pass
        return 1
