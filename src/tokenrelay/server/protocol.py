"""Connection-level limits uvicorn does not have: a deadline for a request's head, a cap on
its size, and a cap on connections waiting for one.

uvicorn times out idle keep-alive connections, but nothing else before a request reaches the
app: a connection that sends nothing, or a head one byte at a time, is held forever (its
keep-alive timer is reset by every byte; see encode/uvicorn#157), and ASGI middleware only
runs once the head is complete. So the protocol classes here wrap uvicorn's own, for both of
its HTTP stacks (h11 and httptools), and add:

* `header_timeout_s`: from the moment a connection opens, or a response on it ends, the next
  request's head must be complete within this time; otherwise 408 and the connection closes;
* `max_head_bytes`: a head larger than this gets 431 and the connection closes (h11 has a
  limit of its own, 16 KiB by default; httptools has none);
* `max_pending_connections`: connections waiting for a head (new or idle keep-alive) beyond
  this number close the oldest of them, so silent connections cannot pile up.

The body is the app's: `BodyLimit` reads it under `body_timeout_s` (server/body_limit.py).

Use: `tokenrelay serve` picks these classes; with plain uvicorn pass
`--http tokenrelay.server.protocol:GuardedH11Protocol` (or `...:GuardedHttpToolsProtocol`).
The limits come from the app's lifespan state (`LIMITS_KEY`, set by `create_app` from its
Settings); an app that publishes none gets the defaults of `ConnectionLimits`.
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from tokenrelay.server.errors import error_body

__all__ = ["LIMITS_KEY", "ConnectionLimits", "GuardedH11Protocol", "guarded_protocol", "http_protocol"]

#: the lifespan-state key under which an app publishes its `ConnectionLimits`
LIMITS_KEY = "tokenrelay.connection_limits"


@dataclass(frozen=True, kw_only=True)
class ConnectionLimits:
    header_timeout_s: float = 10.0
    max_head_bytes: int = 32_768
    max_pending_connections: int = 1000


def _response(status: int, reason: str, message: str, code: str) -> bytes:
    body = json.dumps(error_body(message, code=code)).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


class _HeadGuard:
    """Mixin over a uvicorn HTTP protocol class (see the module docstring). It sees only
    `connection_made`, `data_received`, `on_response_complete` and `connection_lost`, and
    tells that a head is complete by the protocol starting a new request cycle."""

    # attributes of uvicorn's protocol classes this mixin relies on
    transport: asyncio.Transport
    cycle: Any
    app_state: dict[str, Any]
    server_state: Any
    loop: asyncio.AbstractEventLoop

    _guard_timer: asyncio.TimerHandle | None = None
    _guard_cycle: Any = None
    _guard_bytes: int = 0
    _guard_tail: bytes = b""
    _guard_limits: ConnectionLimits = ConnectionLimits()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        limits = self.app_state.get(LIMITS_KEY)
        self._guard_limits = limits if isinstance(limits, ConnectionLimits) else ConnectionLimits()
        self._guard_arm()

    def data_received(self, data: bytes) -> None:
        if self._guard_timer is not None:
            # measured before parsing: an oversized head must never reach the app
            seen = self._guard_tail + data
            ends = [i for i in (seen.find(b"\r\n\r\n"), seen.find(b"\n\n")) if i >= 0]
            head = min(ends) - len(self._guard_tail) if ends else len(data)
            self._guard_tail = seen[-3:]
            self._guard_bytes += max(0, head)
            if self._guard_bytes > self._guard_limits.max_head_bytes:
                self._guard_refuse(
                    _response(
                        431,
                        "Request Header Fields Too Large",
                        f"the request head is larger than {self._guard_limits.max_head_bytes} bytes",
                        "head_too_large",
                    )
                )
                return
        super().data_received(data)  # type: ignore[misc]
        if self._guard_timer is not None and self.cycle is not self._guard_cycle:
            self._guard_disarm()  # a request head is complete: the app takes over

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
            self._guard_arm()  # waiting for the next request's head

    def connection_lost(self, exc: Exception | None) -> None:
        self._guard_disarm()
        super().connection_lost(exc)  # type: ignore[misc]

    # -- the deadline and the pending set

    def _pending(self) -> OrderedDict[_HeadGuard, None]:
        pending: OrderedDict[_HeadGuard, None] | None = getattr(self.server_state, "tokenrelay_pending", None)
        if pending is None:
            pending = OrderedDict()
            self.server_state.tokenrelay_pending = pending
        return pending

    def _guard_arm(self) -> None:
        if self._guard_timer is not None:
            return
        self._guard_cycle = self.cycle
        self._guard_bytes = 0
        self._guard_tail = b""
        self._guard_timer = self.loop.call_later(self._guard_limits.header_timeout_s, self._guard_expired)
        pending = self._pending()
        pending[self] = None
        while len(pending) > self._guard_limits.max_pending_connections:
            oldest, _ = pending.popitem(last=False)
            oldest._guard_refuse(b"")  # too many waiting: the one waiting longest goes

    def _guard_disarm(self) -> None:
        if self._guard_timer is None:
            return
        self._guard_timer.cancel()
        self._guard_timer = None
        self._pending().pop(self, None)

    def _guard_expired(self) -> None:
        self._guard_timer = None
        self._guard_refuse(
            _response(
                408,
                "Request Timeout",
                f"the request head did not arrive within {self._guard_limits.header_timeout_s:g} s",
                "header_timeout",
            )
        )

    def _guard_refuse(self, response: bytes) -> None:
        self._guard_disarm()
        if self.transport.is_closing():
            return
        if response:
            self.transport.write(response)
        self.transport.close()


class GuardedH11Protocol(_HeadGuard, H11Protocol):
    """uvicorn's h11 protocol with the head limits of this module."""


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - httptools not installed
    GUARDED_HTTPTOOLS: type[asyncio.Protocol] | None = None
else:

    class GuardedHttpToolsProtocol(_HeadGuard, HttpToolsProtocol):
        """uvicorn's httptools protocol with the head limits of this module."""

    GUARDED_HTTPTOOLS = GuardedHttpToolsProtocol
    __all__ += ["GuardedHttpToolsProtocol"]


def guarded_protocol(http: str = "auto") -> type[asyncio.Protocol]:
    """The guarded protocol class for uvicorn's `http` setting ("auto": httptools when it is
    installed, as uvicorn does)."""
    if http == "h11" or (http == "auto" and GUARDED_HTTPTOOLS is None):
        return GuardedH11Protocol
    if http in ("httptools", "auto"):
        if GUARDED_HTTPTOOLS is None:
            raise ValueError("the httptools HTTP stack needs the httptools package")
        return GUARDED_HTTPTOOLS
    raise ValueError(f"unknown HTTP stack {http!r}: use auto, h11 or httptools")


def http_protocol(http: str = "auto") -> str:
    """`guarded_protocol(http)` as the import string uvicorn takes (it travels to workers)."""
    cls = guarded_protocol(http)
    return f"{__name__}:{cls.__name__}"
