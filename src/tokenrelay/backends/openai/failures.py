"""How the OpenAI backend turns failures into one-line `BackendError`s.

Invariants: every message is one line, quotes at most `MAX_QUOTE` characters of the server's
own words, and never contains the API key (it is replaced by `***`) nor a URL's password
(`tokenrelay._redact`); 429, 5xx and connection failures are `retryable`, with the server's
Retry-After when it sent one; a 401/403 never quotes the server (OpenAI echoes the key).
"""

from __future__ import annotations

import email.utils
import json
import math
import socket
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

import httpx

from tokenrelay.errors import BackendError

if TYPE_CHECKING:
    from tokenrelay.backends.openai.wire import StreamState

__all__ = ["Failures", "read_capped", "retry_after"]

#: How much of an error response body is read to find the server's message.
MAX_ERROR_BODY: Final = 64 * 1024
#: How much of the server's own words an error message quotes.
MAX_QUOTE: Final = 300


class Failures:
    """The error messages of one backend: knows its key (to hide), URL and timeouts."""

    __slots__ = (
        "_api_key",
        "_base_url",
        "_first_s",
        "_idle_s",
        "_model",
        "_read_s",
        "_shown_url",
        "_timeout_s",
        "first_token_timeout_s",
    )

    def __init__(
        self,
        *,
        api_key: str | None,
        base_url: str,
        shown_url: str,
        model: str,
        timeout_s: float,
        first_s: float,
        idle_s: float,
        read_s: float,
        first_token_timeout_s: float | None,
    ) -> None:
        self._api_key = api_key
        self._base_url = base_url
        self._shown_url = shown_url
        self._model = model
        self._timeout_s = timeout_s
        self._first_s = first_s
        self._idle_s = idle_s
        self._read_s = read_s
        self.first_token_timeout_s = first_token_timeout_s

    def scrub(self, text: str) -> str:
        """`text` on one line, shortened, without the API key."""
        text = " ".join(text.split())
        if self._api_key:
            text = text.replace(self._api_key, "***")
        return text

    def quote(self, text: str) -> str:
        text = self.scrub(text)
        return text if len(text) <= MAX_QUOTE else text[:MAX_QUOTE] + "..."

    def malformed(self, data: str) -> BackendError:
        return BackendError(f"malformed stream chunk from server: {self.quote(data)}")

    def stream_error(self, error: object) -> BackendError:
        message, status = error_message(error)
        retryable = status is not None and (status == 429 or status >= 500)
        return BackendError(
            f"the server reported an error mid-stream: {self.quote(message)}",
            status=status,
            retryable=retryable,
        )

    async def status_error(self, response: httpx.Response) -> BackendError:
        status = response.status_code
        try:
            body = await read_capped(response, MAX_ERROR_BODY)
        except httpx.HTTPError:
            body = b""
        server_text, from_json = server_message(body.decode("utf-8", "replace"))
        detail = f": {self.quote(server_text)}" if server_text else ""
        if status in (401, 403):
            # No server text: OpenAI echoes (part of) the rejected key in it.
            if self._api_key:
                return BackendError(f"the server rejected the API key (HTTP {status})", status=status)
            return BackendError(
                f"the server requires an API key (HTTP {status}); set OPENAI_API_KEY", status=status
            )
        if status == 404:
            if from_json and detail:
                return BackendError(f"model {self._model!r} not found (HTTP 404){detail}", status=status)
            # Not an API error: most likely a wrong base URL (e.g. missing "/v1").
            hint = f"check the base URL and the model name {self._model!r}"
            return BackendError(f"HTTP 404 from {self._shown_url}: {hint}{detail}", status=status)
        if status == 429 or status >= 500:
            what = "rate limited by the server" if status == 429 else "server error"
            return BackendError(
                f"{what} (HTTP {status}){detail}",
                status=status,
                retryable=True,
                retry_after_s=retry_after(response.headers),
            )
        if status >= 400:
            return BackendError(f"the server rejected the request (HTTP {status}){detail}", status=status)
        return BackendError(f"unexpected HTTP {status} from {self._shown_url}{detail}", status=status)

    def transport_error(self, exc: httpx.HTTPError, state: StreamState | None) -> BackendError:
        where = self._shown_url
        if isinstance(exc, httpx.ConnectTimeout):
            return BackendError(
                f"cannot reach OpenAI-compatible server at {where}: connection timed out after "
                f"{_secs(self._timeout_s)} s",
                retryable=True,
            )
        if isinstance(exc, httpx.ConnectError):
            return BackendError(
                f"cannot reach OpenAI-compatible server at {where}: {self.connect_reason(exc)}",
                retryable=True,
            )
        if isinstance(exc, httpx.PoolTimeout):
            return BackendError(
                f"no free connection to {where} after {_secs(self._timeout_s)} s", retryable=True
            )
        if isinstance(exc, httpx.WriteTimeout):
            return BackendError(
                f"sending the request to {where} timed out after {_secs(self._timeout_s)} s", retryable=True
            )
        if isinstance(exc, httpx.ReadTimeout):
            return self.timeout_error(state)
        if isinstance(exc, httpx.RemoteProtocolError) and state is not None:
            return BackendError(
                f"stream ended unexpectedly: the connection to {where} broke ({self.quote(str(exc))})",
                retryable=True,
            )
        reason = self.quote(str(exc)) or type(exc).__name__
        return BackendError(
            f"connection to OpenAI-compatible server at {where} failed: {reason}", retryable=True
        )

    def timeout_error(self, state: StreamState | None) -> BackendError:
        if state is not None and not state.produced and self.first_token_timeout_s is not None:
            return BackendError(
                f"no first token from server within {_secs(self._first_s)} s",
                retryable=True,
            )
        seconds = self._idle_s if state is not None and state.produced else self._read_s
        return BackendError(f"no data from server for {_secs(seconds)} s", retryable=True)

    def connect_reason(self, exc: BaseException) -> str:
        seen: set[int] = set()
        cause: BaseException | None = exc
        while cause is not None and id(cause) not in seen:
            seen.add(id(cause))
            if isinstance(cause, ConnectionRefusedError):
                return "connection refused"
            if isinstance(cause, socket.gaierror):
                host = urlsplit(self._base_url).hostname or self._base_url
                return f"cannot resolve host name {host!r}"
            cause = cause.__cause__ or cause.__context__
        return self.quote(str(exc)) or type(exc).__name__


# -- helpers ------------------------------------------------------------------------------


async def read_capped(response: httpx.Response, limit: int) -> bytes:
    """Up to `limit` bytes of a streamed response body."""
    parts: list[bytes] = []
    size = 0
    async for part in response.aiter_bytes():
        parts.append(part)
        size += len(part)
        if size >= limit:
            break
    return b"".join(parts)[:limit]


def error_message(error: object) -> tuple[str, int | None]:
    """The message and numeric code of an OpenAI-style `error` value."""
    if isinstance(error, dict):
        message = error.get("message") or error.get("detail") or json.dumps(error, ensure_ascii=False)
        code = error.get("code")
        status = code if isinstance(code, int) and 100 <= code <= 599 else None
        return str(message), status
    return str(error), None


def server_message(body: str) -> tuple[str, bool]:
    """The human part of an error body (`{"error": {"message": ...}}` and its variants), and
    whether it came from such a JSON object (rather than being the raw body)."""
    body = body.strip()
    if not body:
        return "", False
    try:
        obj = json.loads(body)
    except ValueError:
        return body, False
    if isinstance(obj, dict):
        for key in ("error", "detail", "message"):
            value = obj.get(key)
            if value:
                return (error_message(value)[0] if key == "error" else str(value)), True
    return body, False


def retry_after(headers: httpx.Headers) -> float | None:
    """Seconds the server asks to wait: `retry-after-ms` (OpenAI), else `Retry-After` as
    seconds or an HTTP date; None when absent or unreadable."""
    try:
        if "retry-after-ms" in headers:
            seconds = float(headers["retry-after-ms"]) / 1000
        else:
            value = headers.get("retry-after")
            if value is None:
                return None
            try:
                seconds = float(value)
            except ValueError:
                when = email.utils.parsedate_to_datetime(value)
                seconds = (when - datetime.now(UTC)).total_seconds()
    except (TypeError, ValueError, OverflowError):
        return None
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _secs(value: float) -> str:
    return f"{value:g}"
