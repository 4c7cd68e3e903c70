"""The client's errors, and how HTTP statuses and transport failures become them.

Every message is one line meant for people. None of them can hold the API key: it travels only
in the `Authorization` header, which no message quotes.
"""

from __future__ import annotations

import json

import httpx

from tokenrelay.errors import TokenrelayError

__all__ = [
    "INCOMPLETE_MESSAGE",
    "IncompleteStreamError",
    "TokenrelayClientError",
    "TokenrelayConnectionError",
    "TokenrelayHTTPError",
    "connection_error",
    "http_error",
    "one_line",
]

INCOMPLETE_MESSAGE = "the stream ended before the answer was complete"


class TokenrelayClientError(TokenrelayError):
    """Base of the client's errors."""


class TokenrelayHTTPError(TokenrelayClientError):
    """The server answered with an HTTP error status (4xx/5xx); `message` is the server's own."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class IncompleteStreamError(TokenrelayClientError):
    """The stream ended (or stalled, or its run failed) before the answer was complete, and it
    could not be resumed; `partial_text` is the answer text received until then, exactly."""

    def __init__(self, partial_text: str, message: str = INCOMPLETE_MESSAGE) -> None:
        super().__init__(message)
        self.partial_text = partial_text


class TokenrelayConnectionError(TokenrelayClientError):
    """The server could not be reached (or the URL is not usable)."""


def one_line(text: str) -> str:
    return " ".join(text.split())


def http_error(status: int, reason: str, body: bytes) -> TokenrelayHTTPError:
    """The server's message from an error body: `{"error": {"message"}}` (tokenrelay, OpenAI),
    `{"error": "..."}`, FastAPI's `{"detail": "..."}`, else the start of the body as text."""
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
    return TokenrelayHTTPError(status, one_line(message))


def connection_error(url: str, exc: Exception) -> TokenrelayConnectionError:
    if isinstance(exc, httpx.InvalidURL | httpx.UnsupportedProtocol):
        return TokenrelayConnectionError(f"invalid server URL {url!r}: {one_line(str(exc))}")
    if isinstance(exc, httpx.TimeoutException):
        return TokenrelayConnectionError(f"the server at {url} did not answer in time")
    return TokenrelayConnectionError(f"cannot reach the server at {url}: {describe(exc)}")


def describe(exc: BaseException) -> str:
    """A transport failure in a few words."""
    return one_line(str(exc)) or type(exc).__name__
