"""A backend for any OpenAI-compatible Chat Completions server, streamed over plain httpx.

Works with OpenAI, vLLM, Ollama, llama-server, LM Studio and anything else that speaks
`POST {base_url}/chat/completions` with `stream: true` (Server-Sent Events). There is no
dependency on the `openai` SDK: the request is built in `wire.py`, the SSE body is decoded
by `tokenrelay.sse` (the one SSE decoder), failures become messages in `failures.py`.

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
import os
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any, Final

import httpx

from tokenrelay._redact import redact_url
from tokenrelay.backends.base import Backend, GenerationSettings, ModelChunk
from tokenrelay.backends.openai.failures import Failures, read_capped
from tokenrelay.backends.openai.wire import StreamState, parse_completion, parse_event, payload
from tokenrelay.backends.retry import RetryPolicy, retrying_stream
from tokenrelay.errors import BackendError, ConfigError
from tokenrelay.messages import Message, ToolSpec
from tokenrelay.sse import SSEDecodeError, SSEDecoder

__all__ = ["DEFAULT_BASE_URL", "OpenAIBackend"]

DEFAULT_BASE_URL: Final = "https://api.openai.com/v1"

#: The longest SSE line accepted (a defence against a server that never sends a newline).
_MAX_LINE_CHARS: Final = 8 * 1024 * 1024
#: How much of a non-streamed (JSON) completion body is read.
_MAX_JSON_BODY: Final = 32 * 1024 * 1024
#: How long to wait for the end of the HTTP body after `[DONE]` so the connection is reused.
_DRAIN_S: Final = 1.0


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
                f"the OpenAI base URL must be an http:// or https:// URL, not {redact_url(base)!r}"
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
        self._shown_url = redact_url(self.base_url)
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
        self._fail = Failures(
            api_key=self._api_key,
            base_url=self.base_url,
            shown_url=self._shown_url,
            model=model,
            timeout_s=timeout_s,
            first_s=self._first_s,
            idle_s=self._idle_s,
            read_s=self._read_s,
            first_token_timeout_s=first_token_timeout_s,
        )

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

    def stream(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[ToolSpec] | None = None,
        settings: GenerationSettings = GenerationSettings(),
    ) -> AsyncGenerator[ModelChunk, None]:
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
            json=payload(self.model, messages, tools, settings, self.extra_body),
            headers=self._headers,
            timeout=self._stream_timeout,
        )
        loop = asyncio.get_running_loop()
        # An explicit first-token timeout is a deadline for the whole wait (keep-alive comments
        # do not extend it); otherwise httpx's per-read timeout is enough.
        first_deadline = loop.time() + self._first_s if self.first_token_timeout_s is not None else None
        idle_s = self._idle_s if self._idle_s < self._read_s else None
        state = StreamState()
        fail = self._fail
        try:
            if first_deadline is None:
                response = await client.send(request, stream=True)
            else:
                async with asyncio.timeout_at(first_deadline):
                    response = await client.send(request, stream=True)
            try:
                if not 200 <= response.status_code < 300:
                    raise await fail.status_error(response)
                if response.headers.get("content-type", "").startswith("application/json"):
                    # The server ignored `stream: true` and sent the whole completion at once.
                    for chunk in parse_completion(await read_capped(response, _MAX_JSON_BODY), state, fail):
                        yield chunk
                else:
                    reads = response.aiter_bytes().__aiter__()
                    decoder = SSEDecoder(max_buffer=_MAX_LINE_CHARS)
                    feed = decoder.feed
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
                        try:
                            events = feed(raw)
                        except SSEDecodeError:
                            raise BackendError(
                                f"malformed stream chunk from server: a line over {_MAX_LINE_CHARS} chars"
                            ) from None
                        for event in events:  # only `data` matters; event types, ids, comments do not
                            for chunk in parse_event(event.data, state, fail):
                                state.produced = True
                                yield chunk
                            if state.done:
                                break
                        if state.done:
                            break
                    if state.done:
                        await _drain(reads)
                    else:
                        # The body ended: its last event may lack the closing blank line.
                        for event in decoder.finish(flush=True):
                            for chunk in parse_event(event.data, state, fail):
                                state.produced = True
                                yield chunk
            finally:
                await response.aclose()
        except httpx.HTTPError as exc:
            if state.finish_reason is None:
                raise fail.transport_error(exc, state) from None
            # The answer was complete: a broken connection after it loses nothing but usage.
        except TimeoutError:
            if state.finish_reason is None:
                raise fail.timeout_error(state) from None
        if not state.done and state.finish_reason is None:
            raise BackendError(
                "stream ended unexpectedly: the server closed the response before [DONE] or a finish_reason",
                retryable=True,
            )
        yield state.finish()

    async def list_models(self) -> list[str]:
        """The model ids the server offers (`GET /models`): a cheap health check."""
        client = self._get_client()
        headers = {k: v for k, v in self._headers.items() if k != "Accept"}
        try:
            response = await client.get(self.base_url + "/models", headers=headers, timeout=self.timeout_s)
        except httpx.HTTPError as exc:
            raise self._fail.transport_error(exc, None) from None
        if not 200 <= response.status_code < 300:
            raise await self._fail.status_error(response)
        try:
            return [str(item["id"]) for item in response.json()["data"]]
        except (ValueError, TypeError, KeyError):
            raise BackendError(
                f"malformed model list from server: {self._fail.quote(response.text)}",
                status=response.status_code,
            ) from None

    # -- errors ---------------------------------------------------------------------------


async def _drain(reads: AsyncIterator[bytes]) -> None:
    """Read what follows `[DONE]` (normally just the end of the body) so the connection can
    go back to the pool; give up quietly after a moment."""
    try:
        async with asyncio.timeout(_DRAIN_S):
            async for _ in reads:
                pass
    except (httpx.HTTPError, TimeoutError):
        pass
