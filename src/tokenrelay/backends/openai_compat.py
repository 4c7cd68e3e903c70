"""A backend for any OpenAI-compatible Chat Completions server, streamed over plain httpx.

Works with OpenAI, vLLM, Ollama, llama-server, LM Studio and anything else that speaks
`POST {base_url}/chat/completions` with `stream: true` (Server-Sent Events). There is no
dependency on the `openai` SDK: the request is built and the SSE body is parsed here.

Invariants (on top of those in `tokenrelay.backends.base`):

* text is whole characters: the byte stream goes through one incremental UTF-8 decoder
  (SSE is UTF-8 by definition, whatever the Content-Type says), so a character split across
  network reads is never cut or replaced;
* every chunk is yielded as soon as its SSE event is complete: nothing is buffered beyond
  the current event, and the hot path does one `json.loads` per event and no per-character
  work;
* the stream ends with exactly one `FinishChunk`, yielded after the HTTP response has been
  released; a stream that ends without `[DONE]` or a `finish_reason` is an error;
* every failure is a one-line `BackendError` (connection, HTTP status, malformed chunk,
  in-stream error, timeout) whose message never contains the API key; 429, 5xx and
  connection failures are `retryable` (with the server's Retry-After), and such a failure
  before the first chunk is retried per `retry` (backends/retry.py), never after it;
* when the consumer stops iterating (`aclose()` of the generator, `break`, or the task is
  cancelled) the HTTP response is closed at once, so the upstream server sees the disconnect
  and can stop generating;
* the `httpx.AsyncClient` is created lazily inside the running event loop and closed by
  `aclose()` (a client passed in by the caller is the caller's to close).

Timeouts: `timeout_s` bounds connecting, writing and waiting for a free pooled connection,
and is the default for the two read timeouts: `first_token_timeout_s` (from sending the
request to the first generated chunk, i.e. prompt processing) and `idle_timeout_s` (the
longest silence between two network reads once tokens flow).
"""

from __future__ import annotations

import asyncio
import codecs
import email.utils
import json
import math
import os
import socket
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import httpx

from tokenrelay.backends.base import (
    Backend,
    FinishChunk,
    GenerationSettings,
    ModelChunk,
    TextChunk,
    ThinkingChunk,
    ToolCallChunk,
)
from tokenrelay.backends.retry import RetryPolicy, retrying_stream
from tokenrelay.errors import BackendError, ConfigError
from tokenrelay.events import Usage
from tokenrelay.messages import Message, ToolSpec

__all__ = ["DEFAULT_BASE_URL", "OpenAIBackend"]

DEFAULT_BASE_URL: Final = "https://api.openai.com/v1"

#: The longest SSE line accepted (a defence against a server that never sends a newline).
_MAX_LINE_CHARS: Final = 8 * 1024 * 1024
#: How much of an error response body is read to find the server's message.
_MAX_ERROR_BODY: Final = 64 * 1024
#: How much of a non-streamed (JSON) completion body is read.
_MAX_JSON_BODY: Final = 32 * 1024 * 1024
#: How long to wait for the end of the HTTP body after `[DONE]` so the connection is reused.
_DRAIN_S: Final = 1.0
#: How much of the server's own words an error message quotes.
_MAX_QUOTE: Final = 300

#: Finish reasons some servers use, mapped onto the OpenAI vocabulary.
_FINISH_ALIASES: Final[dict[str, str]] = {
    "eos": "stop",
    "eos_token": "stop",
    "stop_sequence": "stop",
    "end_turn": "stop",
    "max_tokens": "length",
    "function_call": "tool_calls",
    "tool_use": "tool_calls",
}

_NO_CHUNKS: Final[tuple[ModelChunk, ...]] = ()


class _StreamState:
    """What one `stream` call has learned from the server so far."""

    __slots__ = ("done", "finish_reason", "produced", "tool_ids", "tool_names", "tools_seen", "usage")

    def __init__(self) -> None:
        self.done = False  # saw `data: [DONE]`
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self.produced = False  # yielded at least one chunk (the first token has arrived)
        self.tool_ids: dict[int, str] = {}
        self.tool_names: dict[int, str] = {}
        self.tools_seen = False

    def finish(self) -> FinishChunk:
        reason = self.finish_reason or "stop"
        reason = _FINISH_ALIASES.get(reason, reason)
        if reason == "stop" and self.tools_seen:
            reason = "tool_calls"  # some servers say "stop" after streaming tool calls
        return FinishChunk(reason, self.usage)


class OpenAIBackend(Backend):
    """Streams chat completions from an OpenAI-compatible server.

    `base_url` defaults to `OPENAI_BASE_URL` or the OpenAI API; `api_key` defaults to
    `OPENAI_API_KEY` and may be absent for local servers (pass `""` to send no key even when
    the variable is set). `extra_body` is merged into every request body last; a `None`
    value removes a key (e.g. `{"max_tokens": None, "max_completion_tokens": 512}`). `retry`
    says how a call that fails before its first chunk (429, 5xx, unreachable) is tried again
    (default: `RetryPolicy()`; `NO_RETRY` never retries).
    """

    supports_native_tools = True
    enforces_json_schema = False

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        first_token_timeout_s: float | None = None,
        idle_timeout_s: float | None = None,
        client: httpx.AsyncClient | None = None,
        extra_body: dict[str, Any] | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        if not model:
            raise ConfigError("the OpenAI backend needs a model name, e.g. 'openai:gpt-4o-mini'")
        for label, value in (
            ("timeout_s", timeout_s),
            ("first_token_timeout_s", first_token_timeout_s),
            ("idle_timeout_s", idle_timeout_s),
        ):
            if value is not None and not value > 0:
                raise ConfigError(f"{label} must be a positive number of seconds, not {value!r}")
        base = base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
        try:
            valid = base.startswith(("http://", "https://")) and bool(httpx.URL(base).host)
        except (httpx.InvalidURL, ValueError, TypeError):
            valid = False
        if not valid:
            raise ConfigError(
                f"the OpenAI base URL must be an http:// or https:// URL, not {_redact_url(base)!r}"
            )
        key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")

        self.model = model
        self.name = f"openai:{model}"
        self.base_url = base.rstrip("/")
        self.timeout_s = timeout_s
        self.first_token_timeout_s = first_token_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.extra_body: dict[str, Any] = dict(extra_body or {})
        self.retry = RetryPolicy() if retry is None else retry
        self._api_key = key or None
        self._shown_url = _redact_url(self.base_url)
        self._client = client
        self._owns_client = client is None
        self._client_loop: asyncio.AbstractEventLoop | None = None

        self._idle_s = idle_timeout_s if idle_timeout_s is not None else timeout_s
        self._first_s = first_token_timeout_s if first_token_timeout_s is not None else timeout_s
        # httpx's per-read timeout covers the longer of the two; the shorter one is enforced
        # with asyncio deadlines around reads (never around a `yield`).
        self._read_s = max(self._idle_s, self._first_s)
        self._stream_timeout = httpx.Timeout(timeout_s, read=self._read_s)
        self._headers = {
            "Accept": "text/event-stream",
            "Accept-Encoding": "identity",
            "User-Agent": "tokenrelay",
        }
        if self._api_key:
            self._headers["Authorization"] = f"Bearer {self._api_key}"

    def __repr__(self) -> str:
        return f"OpenAIBackend(model={self.model!r}, base_url={self._shown_url!r})"

    @property
    def shown_url(self) -> str:
        """The base URL without credentials, for messages."""
        return self._shown_url

    # -- client ---------------------------------------------------------------------------

    def _get_client(self) -> httpx.AsyncClient:
        if not self._owns_client:
            assert self._client is not None
            return self._client
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop or self._client.is_closed:
            # A client is bound to the loop it first ran in: a new loop gets a new client.
            self._client = httpx.AsyncClient(
                timeout=self._stream_timeout,
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
            )
            self._client_loop = loop
        return self._client

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None and self._owns_client:
            await client.aclose()
        elif not self._owns_client:
            self._client = client

    # -- requests -------------------------------------------------------------------------

    def _payload(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec] | None, settings: GenerationSettings
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [m.to_openai() for m in messages],
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": settings.temperature,
            "top_p": settings.top_p,
        }
        if settings.max_tokens is not None:
            body["max_tokens"] = settings.max_tokens
        if settings.stop:
            body["stop"] = list(settings.stop)
        if settings.seed is not None:
            body["seed"] = settings.seed
        if tools:
            body["tools"] = [spec.to_openai() for spec in tools]
        if settings.json_schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "action", "schema": settings.json_schema, "strict": False},
            }
        for key, value in self.extra_body.items():
            if value is None:
                body.pop(key, None)
            else:
                body[key] = value
        return body

    def stream(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[ToolSpec] | None = None,
        settings: GenerationSettings = GenerationSettings(),
    ) -> AsyncGenerator[ModelChunk, None]:
        if self.retry.attempts <= 1:  # no retry layer: one generator less per chunk
            return self._stream_once(messages, tools, settings)
        return retrying_stream(
            lambda: self._stream_once(messages, tools, settings), self.retry, where=self._shown_url
        )

    async def _stream_once(
        self, messages: Sequence[Message], tools: Sequence[ToolSpec] | None, settings: GenerationSettings
    ) -> AsyncGenerator[ModelChunk, None]:
        """One HTTP request: the whole stream, or a `BackendError`."""
        client = self._get_client()
        request = client.build_request(
            "POST",
            self.base_url + "/chat/completions",
            json=self._payload(messages, tools, settings),
            headers=self._headers,
            timeout=self._stream_timeout,
        )
        loop = asyncio.get_running_loop()
        # An explicit first-token timeout is a deadline for the whole wait (keep-alive comments
        # do not extend it); otherwise httpx's per-read timeout is enough.
        first_deadline = loop.time() + self._first_s if self.first_token_timeout_s is not None else None
        idle_s = self._idle_s if self._idle_s < self._read_s else None
        state = _StreamState()
        decode = codecs.getincrementaldecoder("utf-8-sig")("replace").decode  # SSE may start with a BOM
        try:
            if first_deadline is None:
                response = await client.send(request, stream=True)
            else:
                async with asyncio.timeout_at(first_deadline):
                    response = await client.send(request, stream=True)
            try:
                if not 200 <= response.status_code < 300:
                    raise await self._status_error(response)
                if response.headers.get("content-type", "").startswith("application/json"):
                    # The server ignored `stream: true` and sent the whole completion at once.
                    for chunk in self._parse_completion(await _read_capped(response, _MAX_JSON_BODY), state):
                        yield chunk
                else:
                    reads = response.aiter_bytes().__aiter__()
                    buffer = ""
                    data: list[str] = []
                    while True:
                        # Deadlines wrap only the network read, never a `yield`: a slow consumer
                        # must not be cancelled by our timer.
                        try:
                            if first_deadline is not None and not state.produced:
                                async with asyncio.timeout_at(first_deadline):
                                    raw = await reads.__anext__()
                            elif idle_s is not None and state.produced:
                                async with asyncio.timeout(idle_s):
                                    raw = await reads.__anext__()
                            else:
                                raw = await reads.__anext__()
                        except StopAsyncIteration:
                            break
                        text = decode(raw)
                        if not text:
                            continue
                        if buffer:
                            text = buffer + text
                        lines = text.split("\n")
                        buffer = lines.pop()
                        if len(buffer) > _MAX_LINE_CHARS:
                            raise BackendError(
                                f"malformed stream chunk from server: a line over {_MAX_LINE_CHARS} chars"
                            )
                        for line in lines:
                            if line and line[-1] == "\r":
                                line = line[:-1]
                            if not line:  # a blank line ends an event
                                if data:
                                    event = data[0] if len(data) == 1 else "\n".join(data)
                                    data.clear()
                                    for chunk in self._parse_event(event, state):
                                        state.produced = True
                                        yield chunk
                                    if state.done:
                                        break
                            elif line.startswith("data:"):
                                data.append(line[6:] if line.startswith("data: ") else line[5:])
                            # other fields (event:, id:, retry:) and comments (":...") are ignored
                        if state.done:
                            break
                    if state.done:
                        await _drain(reads)
                    else:
                        # The body ended: its last event may lack the closing blank line.
                        tail = (buffer + decode(b"", True)).rstrip("\r")
                        if tail.startswith("data:"):
                            data.append(tail[6:] if tail.startswith("data: ") else tail[5:])
                        if data:
                            for chunk in self._parse_event("\n".join(data), state):
                                state.produced = True
                                yield chunk
            finally:
                await response.aclose()
        except httpx.HTTPError as exc:
            if state.finish_reason is None:
                raise self._transport_error(exc, state) from None
            # The answer was complete: a broken connection after it loses nothing but usage.
        except TimeoutError:
            if state.finish_reason is None:
                raise self._timeout_error(state) from None
        if not state.done and state.finish_reason is None:
            raise BackendError(
                "stream ended unexpectedly: the server closed the response before [DONE] or a finish_reason",
                retryable=True,
            )
        yield state.finish()

    def _parse_event(self, data: str, state: _StreamState) -> Sequence[ModelChunk]:
        """The chunks of one SSE `data` payload; updates `state` (finish reason, usage, [DONE])."""
        if data == "[DONE]":
            state.done = True
            return _NO_CHUNKS
        try:
            obj = json.loads(data)
        except ValueError:
            raise self._malformed(data) from None
        if type(obj) is not dict:
            raise self._malformed(data)
        error = obj.get("error")
        if error:
            raise self._stream_error(error)
        out: list[ModelChunk] = []
        try:
            choices = obj.get("choices")
            if choices:
                choice = choices[0]
                delta = choice.get("delta")
                if delta:
                    reasoning = delta.get("reasoning_content") or delta.get("reasoning")
                    if reasoning and type(reasoning) is str:
                        out.append(ThinkingChunk(reasoning))
                    content = delta.get("content")
                    if content:
                        if type(content) is not str:
                            raise self._malformed(data)
                        out.append(TextChunk(content))
                    tool_calls = delta.get("tool_calls")
                    if tool_calls:
                        for position, call in enumerate(tool_calls):
                            chunk = self._tool_chunk(call, position, state)
                            if chunk is not None:
                                out.append(chunk)
                reason = choice.get("finish_reason")
                if reason:
                    state.finish_reason = str(reason)
            usage = obj.get("usage")
            if usage:
                state.usage = Usage(
                    prompt_tokens=int(usage.get("prompt_tokens") or 0),
                    completion_tokens=int(usage.get("completion_tokens") or 0),
                )
        except (AttributeError, TypeError, ValueError, KeyError, IndexError):
            raise self._malformed(data) from None
        return out

    @staticmethod
    def _tool_chunk(call: dict[str, Any], position: int, state: _StreamState) -> ToolCallChunk | None:
        index = call.get("index")
        index = position if index is None else int(index)
        function = call.get("function") or {}
        call_id = call.get("id") or None
        name = function.get("name") or None
        arguments = function.get("arguments") or ""
        if type(arguments) is not str:  # a few servers send the arguments as an object
            arguments = json.dumps(arguments, ensure_ascii=False)
        # Some servers repeat id and name on every fragment: pass each on once.
        if call_id is not None:
            if state.tool_ids.get(index) == call_id:
                call_id = None
            else:
                state.tool_ids[index] = call_id
        if name is not None:
            if state.tool_names.get(index) == name:
                name = None
            else:
                state.tool_names[index] = name
        if call_id is None and name is None and not arguments:
            return None
        state.tools_seen = True
        return ToolCallChunk(index=index, id=call_id, name=name, arguments=arguments)

    def _parse_completion(self, body: bytes, state: _StreamState) -> list[ModelChunk]:
        """The chunks of a non-streamed completion (servers that ignore `stream: true`)."""
        text = body.decode("utf-8", "replace")
        try:
            obj = json.loads(text)
        except ValueError:
            raise self._malformed(text) from None
        if type(obj) is not dict:
            raise self._malformed(text)
        if obj.get("error"):
            raise self._stream_error(obj["error"])
        out: list[ModelChunk] = []
        try:
            choice = obj["choices"][0]
            message = choice.get("message") or {}
            reasoning = message.get("reasoning_content") or message.get("reasoning")
            if reasoning and type(reasoning) is str:
                out.append(ThinkingChunk(reasoning))
            if message.get("content"):
                out.append(TextChunk(str(message["content"])))
            for position, call in enumerate(message.get("tool_calls") or ()):
                chunk = self._tool_chunk(call, position, state)
                if chunk is not None:
                    out.append(chunk)
            state.finish_reason = str(choice.get("finish_reason") or "stop")
            usage = obj.get("usage")
            if usage:
                state.usage = Usage(
                    prompt_tokens=int(usage.get("prompt_tokens") or 0),
                    completion_tokens=int(usage.get("completion_tokens") or 0),
                )
        except (AttributeError, TypeError, ValueError, KeyError, IndexError):
            raise self._malformed(text) from None
        return out

    async def list_models(self) -> list[str]:
        """The model ids the server offers (`GET /models`): a cheap health check."""
        client = self._get_client()
        headers = {k: v for k, v in self._headers.items() if k != "Accept"}
        try:
            response = await client.get(self.base_url + "/models", headers=headers, timeout=self.timeout_s)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc, None) from None
        if not 200 <= response.status_code < 300:
            raise await self._status_error(response)
        try:
            return [str(item["id"]) for item in response.json()["data"]]
        except (ValueError, TypeError, KeyError):
            raise BackendError(
                f"malformed model list from server: {self._quote(response.text)}", status=response.status_code
            ) from None

    # -- errors ---------------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        """`text` on one line, shortened, without the API key."""
        text = " ".join(text.split())
        if self._api_key:
            text = text.replace(self._api_key, "***")
        return text

    def _quote(self, text: str) -> str:
        text = self._scrub(text)
        return text if len(text) <= _MAX_QUOTE else text[:_MAX_QUOTE] + "..."

    def _malformed(self, data: str) -> BackendError:
        return BackendError(f"malformed stream chunk from server: {self._quote(data)}")

    def _stream_error(self, error: object) -> BackendError:
        message, status = _error_message(error)
        retryable = status is not None and (status == 429 or status >= 500)
        return BackendError(
            f"the server reported an error mid-stream: {self._quote(message)}",
            status=status,
            retryable=retryable,
        )

    async def _status_error(self, response: httpx.Response) -> BackendError:
        status = response.status_code
        try:
            body = await _read_capped(response, _MAX_ERROR_BODY)
        except httpx.HTTPError:
            body = b""
        server_text, from_json = _server_message(body.decode("utf-8", "replace"))
        detail = f": {self._quote(server_text)}" if server_text else ""
        if status in (401, 403):
            # No server text: OpenAI echoes (part of) the rejected key in it.
            if self._api_key:
                return BackendError(f"the server rejected the API key (HTTP {status})", status=status)
            return BackendError(
                f"the server requires an API key (HTTP {status}); set OPENAI_API_KEY", status=status
            )
        if status == 404:
            if from_json and detail:
                return BackendError(f"model {self.model!r} not found (HTTP 404){detail}", status=status)
            # Not an API error: most likely a wrong base URL (e.g. missing "/v1").
            hint = f"check the base URL and the model name {self.model!r}"
            return BackendError(f"HTTP 404 from {self._shown_url}: {hint}{detail}", status=status)
        if status == 429:
            return BackendError(
                f"rate limited by the server (HTTP 429){detail}",
                status=status,
                retryable=True,
                retry_after_s=_retry_after(response.headers),
            )
        if status >= 500:
            return BackendError(
                f"server error (HTTP {status}){detail}",
                status=status,
                retryable=True,
                retry_after_s=_retry_after(response.headers),
            )
        if status >= 400:
            return BackendError(f"the server rejected the request (HTTP {status}){detail}", status=status)
        return BackendError(f"unexpected HTTP {status} from {self._shown_url}{detail}", status=status)

    def _transport_error(self, exc: httpx.HTTPError, state: _StreamState | None) -> BackendError:
        where = self._shown_url
        if isinstance(exc, httpx.ConnectTimeout):
            return BackendError(
                f"cannot reach OpenAI-compatible server at {where}: connection timed out after "
                f"{_seconds(self.timeout_s)} s",
                retryable=True,
            )
        if isinstance(exc, httpx.ConnectError):
            return BackendError(
                f"cannot reach OpenAI-compatible server at {where}: {self._connect_reason(exc)}",
                retryable=True,
            )
        if isinstance(exc, httpx.PoolTimeout):
            return BackendError(
                f"no free connection to {where} after {_seconds(self.timeout_s)} s", retryable=True
            )
        if isinstance(exc, httpx.WriteTimeout):
            return BackendError(
                f"sending the request to {where} timed out after {_seconds(self.timeout_s)} s", retryable=True
            )
        if isinstance(exc, httpx.ReadTimeout):
            return self._timeout_error(state)
        if isinstance(exc, httpx.RemoteProtocolError) and state is not None:
            return BackendError(
                f"stream ended unexpectedly: the connection to {where} broke ({self._quote(str(exc))})",
                retryable=True,
            )
        reason = self._quote(str(exc)) or type(exc).__name__
        return BackendError(
            f"connection to OpenAI-compatible server at {where} failed: {reason}", retryable=True
        )

    def _timeout_error(self, state: _StreamState | None) -> BackendError:
        if state is not None and not state.produced and self.first_token_timeout_s is not None:
            return BackendError(
                f"no first token from server within {_seconds(self._first_s)} s",
                retryable=True,
            )
        seconds = self._idle_s if state is not None and state.produced else self._read_s
        return BackendError(f"no data from server for {_seconds(seconds)} s", retryable=True)

    def _connect_reason(self, exc: BaseException) -> str:
        seen: set[int] = set()
        cause: BaseException | None = exc
        while cause is not None and id(cause) not in seen:
            seen.add(id(cause))
            if isinstance(cause, ConnectionRefusedError):
                return "connection refused"
            if isinstance(cause, socket.gaierror):
                host = urlsplit(self.base_url).hostname or self.base_url
                return f"cannot resolve host name {host!r}"
            cause = cause.__cause__ or cause.__context__
        return self._quote(str(exc)) or type(exc).__name__


# -- helpers ------------------------------------------------------------------------------


async def _read_capped(response: httpx.Response, limit: int) -> bytes:
    """Up to `limit` bytes of a streamed response body."""
    parts: list[bytes] = []
    size = 0
    async for part in response.aiter_bytes():
        parts.append(part)
        size += len(part)
        if size >= limit:
            break
    return b"".join(parts)[:limit]


async def _drain(reads: AsyncIterator[bytes]) -> None:
    """Read what follows `[DONE]` (normally just the end of the body) so the connection can
    go back to the pool; give up quietly after a moment."""
    try:
        async with asyncio.timeout(_DRAIN_S):
            async for _ in reads:
                pass
    except (httpx.HTTPError, TimeoutError):
        pass


def _error_message(error: object) -> tuple[str, int | None]:
    """The message and numeric code of an OpenAI-style `error` value."""
    if isinstance(error, dict):
        message = error.get("message") or error.get("detail") or json.dumps(error, ensure_ascii=False)
        code = error.get("code")
        status = code if isinstance(code, int) and 100 <= code <= 599 else None
        return str(message), status
    return str(error), None


def _server_message(body: str) -> tuple[str, bool]:
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
                return (_error_message(value)[0] if key == "error" else str(value)), True
    return body, False


def _retry_after(headers: httpx.Headers) -> float | None:
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


def _redact_url(url: str) -> str:
    """`url` without credentials or query string, for messages."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid URL>"
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _seconds(value: float) -> str:
    return f"{value:g}"
