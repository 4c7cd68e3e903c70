"""The server's own `send`, kept in the scope for responses that write many times.

Each of Starlette's and FastAPI's middlewares wraps `send` in a coroutine of its own; a
streamed response that writes once per token would pass through all of them for every token.
`RawSendApp` puts the `send` it was called with (uvicorn's) into the scope under `RAW_SEND`,
and the run-following response writes its bodies through it (its head still goes through the
middlewares, which note that the response started).

Invariant: the raw `send` is offered only while every middleware of the app is known to leave
response bodies alone (`body_safe_middleware`, plus the framework's own) and FastAPI's own
telemetry is off: a middleware an embedding application adds (gzip, say) sees every body.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["RAW_SEND", "RawSendApp"]

#: the scope key of the server's own `send`
RAW_SEND = "tokenrelay.send"


class RawSendApp(FastAPI):
    """FastAPI that offers responses the server's own `send` (module doc)."""

    #: middleware classes known to leave response bodies alone (set by create_app)
    body_safe_middleware: tuple[type, ...] = ()
    _raw_send_ok = False

    def build_middleware_stack(self) -> ASGIApp:
        safe: tuple[object, ...] = self.body_safe_middleware
        self._raw_send_ok = all(m.cls in safe for m in self.user_middleware)
        return super().build_middleware_stack()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.middleware_stack is None:
            self.middleware_stack = self.build_middleware_stack()
        if self._raw_send_ok and not _telemetry_on(self):
            scope[RAW_SEND] = send
        await super().__call__(scope, receive, send)


def _telemetry_on(app: FastAPI) -> bool:
    """Whether FastAPI's own telemetry (newer FastAPI) wraps requests, and so `send`."""
    telemetry = getattr(app, "_native_telemetry", None)
    try:
        return telemetry is not None and bool(telemetry.enabled())
    except Exception:  # an unknown FastAPI: assume it wraps
        return True
