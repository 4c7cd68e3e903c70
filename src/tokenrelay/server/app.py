"""The HTTP server factory: `create_app(settings) -> FastAPI`.

The lifespan builds the long-lived parts once (model backend, session store, run registry,
Redis coordinator); requests share only those (server/deps.py hands them to routes). This
module only assembles: middleware (body_limit, guard), error handlers (errors), routes
(routes/), the page (page).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from tokenrelay.agent.protocol import AgentLike
from tokenrelay.api import Runner
from tokenrelay.backends import Backend, load_backend
from tokenrelay.config import Settings
from tokenrelay.memory import SessionStore, open_store
from tokenrelay.runs import RunRegistry
from tokenrelay.server.body_limit import BodyLimit
from tokenrelay.server.deps import __version__
from tokenrelay.server.errors import install_error_handlers
from tokenrelay.server.follow import install_log_filter
from tokenrelay.server.guard import RequestGuard
from tokenrelay.server.page import mount_page
from tokenrelay.server.protocol import LIMITS_KEY, ConnectionLimits
from tokenrelay.server.quotas import Quotas, install_quota_errors
from tokenrelay.server.raw_send import RawSendApp
from tokenrelay.server.routes import ROUTERS
from tokenrelay.server.telemetry import Metrics, RunMonitor, sample_every
from tokenrelay.server.telemetry import router as telemetry_router

__all__ = ["create_app"]


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
        await runner.warm()
    except Exception:  # an optimisation: a failure here must not take the server down
        logging.getLogger("tokenrelay.server").warning("warming the agent's prompts failed", exc_info=True)


def create_app(
    settings: Settings | None = None,
    *,
    agent: AgentLike | None = None,
    backend: Backend | None = None,
    store: SessionStore | None = None,
) -> FastAPI:
    """The tokenrelay ASGI app. `backend`/`store` override what `settings` would build
    (tests pass a scripted backend); the app closes only what it built itself. `agent` serves
    any `AgentLike` (a LangChain graph: `integrations/langchain/server.py`) instead of
    tokenrelay's agent; then no backend is built unless given."""
    settings = settings or Settings.from_env()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        install_log_filter()
        own_backend = backend
        if own_backend is None and agent is None:
            own_backend = load_backend(settings.model, settings)
        own_store = store or open_store(settings.db)
        if not settings.redis_url:
            # one process owns every run: whatever is still `running` died with the last one.
            # With Redis (several workers), runs of dead workers are closed by lease instead.
            await own_store.recover_running()
        load = getattr(own_backend, "load", None)
        if load is not None:
            await load()  # the first request should not pay for loading the model
        runner = Runner(settings, own_backend, own_store, agent=agent)
        if load is not None:
            await _warm(runner)
        registry = RunRegistry(
            max_events=settings.max_buffered_events,
            grace_s=settings.resume_grace_s if settings.resume_grace_s >= 0 else None,
        )
        app.state.runner = runner
        app.state.registry = registry
        app.state.monitor = RunMonitor(runner.model_name, app.state.metrics)
        app.state.coordinator = None
        if settings.redis_url:
            from tokenrelay.runs.redis import WORKER_LOST, RedisCoordinator

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
            if backend is None and own_backend is not None:
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

    install_error_handlers(app)
    install_quota_errors(app)
    for router in ROUTERS:
        app.include_router(router)
    app.include_router(telemetry_router)
    mount_page(app)
    return app
