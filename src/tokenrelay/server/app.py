"""The HTTP server factory: `create_app(settings) -> FastAPI`.

The lifespan builds the long-lived parts once (model backend, session store, run registry);
requests share only those. Every error response, 4xx or 5xx, has the same JSON shape,
`{"error": {"message", "type", "code"}}` (the OpenAI shape, so their SDK reports it too).
"""

from __future__ import annotations

import asyncio
import json
import logging
import mimetypes
import os
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from tokenrelay.api import Runner
from tokenrelay.backends import Backend, load_backend
from tokenrelay.config import Settings
from tokenrelay.errors import StorageError
from tokenrelay.memory import SessionStore, open_store
from tokenrelay.server.guard import RequestGuard
from tokenrelay.server.protocol import LIMITS_KEY, ConnectionLimits
from tokenrelay.server.quotas import Quotas, install_quota_errors
from tokenrelay.server.raw_send import RawSendApp
from tokenrelay.server.runs import RunRegistry
from tokenrelay.server.streaming import install_log_filter
from tokenrelay.server.telemetry import Metrics, RunMonitor, sample_every

__all__ = ["create_app", "error_body"]

try:
    __version__ = version("tokenrelay")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0"


def error_body(
    message: str, *, type_: str = "invalid_request_error", code: str | None = None, **extra: Any
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "code": code, **extra}}


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
                        refusal = _closing(
                            error_body("the server is reading too many request bodies; retry shortly",
                                       type_="server_error", code="busy"),
                            503, {"Retry-After": "1"},
                        )  # fmt: skip
                        break
                    self.buffered += len(body)
                    chunks.append(body)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            refusal = _closing(
                error_body(
                    f"the request body did not arrive within {self.timeout_s:g} s", code="body_timeout"
                ),
                408,
            )
        finally:
            self.buffered -= sum(len(c) for c in chunks)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        replayed = False

        async def replay() -> Any:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        if _SURROGATE_ESCAPE.search(b"".join(chunks)) and _has_lone_surrogate(b"".join(chunks)):
            response = JSONResponse(
                error_body(
                    "the JSON body contains a lone UTF-16 surrogate escape (\\ud800-\\udfff without "
                    "its pair), which is not valid Unicode",
                    code="invalid_unicode",
                ),
                status_code=422,
            )
            await response(scope, replay, send)
            return
        await self.app(scope, replay, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = JSONResponse(
            error_body(f"request body is larger than {self.limit} bytes", code="body_too_large"),
            status_code=413,
        )
        await response(scope, receive, send)


def _closing(body: dict[str, Any], status: int, headers: dict[str, str] | None = None) -> JSONResponse:
    """An error response that closes the connection (the rest of its body is never read)."""
    return JSONResponse(body, status_code=status, headers={"Connection": "close", **(headers or {})})


_MAX_PROBLEMS = 20
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


def _parse_problem(exc: BaseException | None) -> str | None:
    """What is wrong with a body the JSON parser rejected (FastAPI chains the cause)."""
    if isinstance(exc, UnicodeDecodeError):
        return f"the request body is not valid UTF-8 (byte 0x{exc.object[exc.start]:02x} at {exc.start})"
    if isinstance(exc, RecursionError):
        return "the request body's JSON is nested too deeply"
    if isinstance(exc, ValueError) and "digits" in str(exc):
        return f"the request body has a number that is too long: {exc}"
    return None


def connection_limits(settings: Settings) -> ConnectionLimits:
    return ConnectionLimits(
        header_timeout_s=settings.header_timeout_s,
        max_head_bytes=settings.max_head_bytes,
        max_pending_connections=settings.max_pending_connections,
    )


async def _warm(runner: Runner) -> None:
    """Evaluate the embedded agent's decision prompt before the first request (like loading the
    model: a server is ready when it says so, and its worker is idle)."""
    try:
        await runner.agent.warm()
    except Exception:  # an optimisation: a failure here must not take the server down
        logging.getLogger("tokenrelay.server").warning("warming the agent's prompts failed", exc_info=True)


def create_app(
    settings: Settings | None = None, *, backend: Backend | None = None, store: SessionStore | None = None
) -> FastAPI:
    """The tokenrelay ASGI app. `backend`/`store` override what `settings` would build
    (tests pass a scripted backend); the app closes only what it built itself."""
    settings = settings or Settings.from_env()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        install_log_filter()
        own_backend = backend or load_backend(settings.model, settings)
        own_store = store or open_store(settings.db)
        if not settings.redis_url:
            # one process owns every run: whatever is still `running` died with the last one.
            # With Redis (several workers), runs of dead workers are closed by lease instead.
            await own_store.recover_running()
        load = getattr(own_backend, "load", None)
        if load is not None:
            await load()  # the first request should not pay for loading the model
        runner = Runner(settings, own_backend, own_store)
        if load is not None:
            await _warm(runner)
        registry = RunRegistry(
            max_events=settings.max_buffered_events,
            grace_s=settings.resume_grace_s if settings.resume_grace_s >= 0 else None,
        )
        app.state.runner = runner
        app.state.registry = registry
        app.state.monitor = RunMonitor(own_backend.name, app.state.metrics)
        app.state.coordinator = None
        if settings.redis_url:
            from tokenrelay.server.coordination import WORKER_LOST, RedisCoordinator

            coordinator = RedisCoordinator(
                settings.redis_url, retention_s=settings.event_retention_s, prefix=settings.redis_prefix
            )

            async def worker_lost(run_id: str) -> None:
                await own_store.interrupt_run(run_id, error=WORKER_LOST)

            await coordinator.start(registry.cancel_local, worker_lost)
            registry.on_start = coordinator.replicate
            registry.followed_elsewhere = coordinator.followed_elsewhere
            app.state.coordinator = coordinator
        app.state.quotas = Quotas(settings, registry, own_store, app.state.coordinator)
        ticker = asyncio.create_task(registry.keepalive(settings.keepalive_s))

        sampler = asyncio.create_task(sample_every(app, 1.0)) if app.state.metrics else None
        try:
            # the guarded uvicorn protocols (server/protocol.py) read their limits from here
            yield {LIMITS_KEY: connection_limits(settings)}
        finally:
            ticker.cancel()
            if sampler is not None:
                sampler.cancel()
            if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # this worker's gauges leave the sums
                from prometheus_client import multiprocess

                multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
            await registry.shutdown()
            if app.state.coordinator is not None:
                await app.state.coordinator.close()
            if backend is None:
                await own_backend.aclose()
            if store is None:
                await own_store.close()

    app = RawSendApp(
        title="tokenrelay",
        version=__version__,
        description="Stream an LLM agent's answer token by token: raw text, typed SSE, OpenAI-compatible.",
        lifespan=lifespan,
        # Swagger UI loads its script from a CDN onto the origin where the page keeps the API
        # key: only when asked for (the OpenAPI description itself is always served)
        docs_url="/docs" if settings.api_docs else None,
        redoc_url=None,
    )
    app.body_safe_middleware = (RequestGuard, BodyLimit)
    app.state.settings = settings
    app.state.metrics = Metrics() if settings.metrics else None
    app.add_middleware(
        BodyLimit,
        limit=settings.max_body_bytes,
        timeout_s=settings.body_timeout_s,
        max_buffered=settings.max_buffered_body_bytes,
    )
    app.add_middleware(RequestGuard, settings=settings)  # outermost: before any body is read

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "authentication_error" if exc.status_code == 401 else "invalid_request_error"
        if exc.status_code >= 500:
            kind = "server_error"
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 400:
            message = _parse_problem(exc.__cause__) or message
        return JSONResponse(
            error_body(message, type_=kind, code=str(exc.status_code)),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        content_type = request.headers.get("content-type", "")
        if request.method in ("POST", "PUT", "PATCH") and "json" not in content_type.lower():
            return JSONResponse(
                error_body(
                    f"Content-Type must be application/json (got {content_type or 'none'})",
                    code="unsupported_media_type",
                ),
                status_code=415,
            )
        problems = []
        errors = exc.errors()
        for err in errors[:_MAX_PROBLEMS]:
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
            problems.append(f"{where[:100]}: {err.get('msg', 'invalid')}")
        if len(errors) > _MAX_PROBLEMS:
            problems.append(f"and {len(errors) - _MAX_PROBLEMS} more problems")
        message = "; ".join(problems) or "invalid request"
        return JSONResponse(error_body(message, code="invalid_request"), status_code=422)

    @app.exception_handler(StorageError)
    async def storage_error(request: Request, exc: StorageError) -> JSONResponse:
        # the database is away (restarting, disk full): say so, and that it is worth a retry
        return JSONResponse(
            error_body(str(exc), type_="server_error", code="storage_unavailable"),
            status_code=503,
            headers={"Retry-After": "1"},
        )

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        # a bug: still the documented JSON shape (the server logs the traceback)
        return JSONResponse(error_body("internal server error", type_="server_error"), status_code=500)

    install_quota_errors(app)
    from tokenrelay.server import (
        routes_chat,
        routes_documents,
        routes_info,
        routes_openai,
        routes_sessions,
        telemetry,
    )

    app.include_router(routes_chat.router)
    app.include_router(routes_info.router)
    app.include_router(telemetry.router)
    app.include_router(routes_sessions.router)
    app.include_router(routes_documents.router)
    app.include_router(routes_openai.router)
    _mount_page(app)
    return app


STATIC_DIR = Path(__file__).parent / "static"


def _mount_page(app: FastAPI) -> None:
    """The web chat page at `/`, its files under `/static` (shipped inside the package).

    The page's Content-Security-Policy goes out as a header too (a `<meta>` policy cannot say
    `frame-ancestors`): with `frame-ancestors 'none'` and `X-Frame-Options: DENY` no other
    site can frame the page (clickjacking the origin that keeps the API key)."""
    mimetypes.add_type("text/javascript", ".mjs")  # browsers refuse ES modules served otherwise
    index = STATIC_DIR / "index.html"
    if not index.is_file():
        return
    headers = {
        "Cache-Control": "no-cache",
        "Content-Security-Policy": page_policy(index.read_text(encoding="utf-8")),
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(index, media_type="text/html; charset=utf-8", headers=headers)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")


_META_POLICY = re.compile(r'http-equiv="Content-Security-Policy"\s+content="([^"]+)"', re.IGNORECASE)
DEFAULT_PAGE_POLICY = "default-src 'self'; object-src 'none'; base-uri 'self'"


def page_policy(html: str) -> str:
    """The page's own `<meta>` policy (the page's authors keep it) plus `frame-ancestors 'none'`."""
    match = _META_POLICY.search(html)
    policy = match.group(1).strip().rstrip(";") if match else DEFAULT_PAGE_POLICY
    if "frame-ancestors" not in policy:
        policy += "; frame-ancestors 'none'"
    return policy
