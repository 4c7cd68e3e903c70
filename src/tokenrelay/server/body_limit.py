"""Request bodies under limits: `BodyLimit` refuses a body over `limit` bytes with 413 before
it is read into memory, one that does not arrive within `timeout_s` with 408, and one that
would take the bodies being read at once past `max_buffered` bytes with 503 and Retry-After
(each closing the connection): slow or parallel uploads hold bounded memory for a bounded
time. A JSON body with a lone UTF-16 surrogate escape gets 422 here, before any route."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from tokenrelay.server.errors import closing_error, error_response

__all__ = ["BodyLimit"]


class BodyLimit:
    """Reject bodies over `limit` bytes with 413 before they are read into memory; a body
    that does not arrive within `timeout_s` gets 408, and one that would take the bodies being
    read at once past `max_buffered` bytes gets 503 with Retry-After (both close the
    connection): slow or parallel uploads hold bounded memory for a bounded time."""

    def __init__(
        self, app: ASGIApp, limit: int, timeout_s: float = 30.0, max_buffered: int = 64_000_000
    ) -> None:
        self.app = app
        self.limit = limit
        self.timeout_s = timeout_s
        self.max_buffered = max_buffered
        #: bytes of the bodies being read now, all requests together
        self.buffered = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    too_big = int(value) > self.limit
                except ValueError:
                    too_big = False
                if too_big:
                    await self._reject(scope, receive, send)
                    return
        # Read the (small) body up front, so an oversize chunked body is refused with 413
        # instead of failing inside the framework's parser; then replay it.
        chunks: list[bytes] = []
        seen = 0
        refusal: JSONResponse | None = None
        try:
            async with asyncio.timeout(self.timeout_s):
                while True:
                    message = await receive()
                    if message["type"] != "http.request":  # the client left before sending it all
                        return
                    body = message.get("body", b"")
                    seen += len(body)
                    if seen > self.limit:
                        await self._reject(scope, receive, send)
                        return
                    if self.buffered + len(body) > self.max_buffered:
                        refusal = closing_error(
                            "the server is reading too many request bodies; retry shortly", 503,
                            type_="server_error", code="busy", **{"Retry-After": "1"},
                        )  # fmt: skip
                        break
                    self.buffered += len(body)
                    chunks.append(body)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            refusal = closing_error(
                f"the request body did not arrive within {self.timeout_s:g} s", 408, code="body_timeout"
            )
        finally:
            self.buffered -= sum(len(c) for c in chunks)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        whole = chunks[0] if len(chunks) == 1 else b"".join(chunks)  # (joined once)
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": whole, "more_body": False}
            return await receive()

        if _SURROGATE_ESCAPE.search(whole) and _has_lone_surrogate(whole):
            response = error_response(
                "the JSON body contains a lone UTF-16 surrogate escape (\\ud800-\\udfff without "
                "its pair), which is not valid Unicode",
                422,
                code="invalid_unicode",
            )
            await response(scope, replay, send)
            return
        await self.app(scope, replay, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(
            f"request body is larger than {self.limit} bytes", 413, code="body_too_large"
        )
        await response(scope, receive, send)


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _has_lone_surrogate(body: bytes) -> bool:
    """Whether a JSON body decodes to a string with a lone surrogate (which cannot be encoded
    as UTF-8: it would crash the response, the store, the upstream request)."""
    try:
        value = json.loads(body)
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    except (ValueError, RecursionError):
        return False  # not JSON: the route's own validation says so
    return False
