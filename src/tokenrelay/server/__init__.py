"""The HTTP server. `uvicorn tokenrelay.server:app` builds the app from environment
variables (TOKENRELAY_MODEL, TOKENRELAY_DB, ...); `tokenrelay serve` does the same with flags."""

from __future__ import annotations

import os
from typing import Any

from tokenrelay.config import Settings
from tokenrelay.server.app import create_app
from tokenrelay.server.loop import event_loop

__all__ = ["create_app", "create_app_from_env", "event_loop", "serve", "uvicorn_options"]


def create_app_from_env() -> Any:
    """The app for a server process of its own (`tokenrelay serve`, `uvicorn tokenrelay.server:app`).

    Such a process also tunes the garbage collector: thousands of streams allocate many small
    objects per second, and the default thresholds make full collections (tens of ms, a stall
    for every stream at once) frequent. Objects alive at start-up are frozen out of collections.
    An application that embeds `create_app` keeps its own settings."""
    import gc

    from tokenrelay.server.logs import configure_logging

    settings = Settings.from_env()
    configure_logging(settings.log_level)
    app = create_app(settings)
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    return app


def __getattr__(name: str) -> Any:
    if name == "app":  # built on first access, so importing this package stays cheap
        app = create_app_from_env()
        globals()["app"] = app
        return app
    raise AttributeError(name)


_ENV_FIELDS = ("model", "db", "max_tokens", "temperature", "system_prompt", "openai_base_url",
               "tool_protocol", "max_iterations", "early_stopping_method", "redis_url",
               "log_level", "host")  # fmt: skip


def serve(settings: Settings) -> int:
    """Run uvicorn. Settings travel to worker processes through the environment."""
    import shutil
    import sys
    import tempfile

    import uvicorn

    if settings.workers > 1 and not settings.redis_url:
        print(
            "tokenrelay: warning: several workers without --redis: cancel and resume work only on the "
            "worker that runs the answer",
            file=sys.stderr,
        )
    for name in _ENV_FIELDS:
        value = getattr(settings, name)
        if value is not None:
            os.environ["TOKENRELAY_" + name.upper()] = str(value)
    if settings.openai_api_key:
        os.environ.setdefault("OPENAI_API_KEY", settings.openai_api_key)
    if settings.workers > 1:
        _nodelay_shared_socket()
    metrics_dir = None
    if settings.workers > 1 and settings.metrics and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # prometheus-client's multiprocess mode: every worker writes its metrics there, and any
        # worker's /metrics sums them. A fresh directory per server: stale files would count.
        metrics_dir = tempfile.mkdtemp(prefix="tokenrelay-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        uvicorn.run(
            "tokenrelay.server:create_app_from_env",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            **uvicorn_options(settings),
        )
    finally:
        if metrics_dir is not None:
            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def uvicorn_options(settings: Settings, *, access_log: bool = False) -> dict[str, Any]:
    """uvicorn's settings for serving tokenrelay, for every place that starts uvicorn.

    * `http`: uvicorn's httptools stack (a C parser; h11 where httptools is not installed),
      wrapped with the request-head limits of server/protocol.py;
    * `loop`: `event_loop` (server/loop.py): uvloop accepting every pending connection per
      wake-up, or asyncio's loop where uvloop is not installed;
    * `backlog` 4096: a burst of a few thousand connects waits in the kernel instead of having
      its SYNs dropped (Linux caps it at net.core.somaxconn);
    * `access_log` off unless asked: a line per request costs more than the request at
      thousands of streams; logging through tokenrelay's logfmt config at the settings' level.
    """
    from tokenrelay.server.logs import logging_config
    from tokenrelay.server.protocol import GUARDED_HTTPTOOLS, http_protocol

    level = settings.log_level.lower()
    return {
        "http": http_protocol("httptools" if GUARDED_HTTPTOOLS is not None else "h11"),
        "loop": "tokenrelay.server:event_loop",
        "backlog": 4096,
        "access_log": access_log,
        "log_level": level,
        "log_config": logging_config(level),
    }


def _nodelay_shared_socket() -> None:
    """Several workers share a socket that uvicorn binds with `socket.socket(family)`, proto 0,
    so asyncio does not set TCP_NODELAY on the connections it accepts, and every response
    written in more than one piece (headers, then each token) waits for the client's delayed
    ACK (~40 ms, Nagle). Set on the listening socket, Linux passes it on to accepted ones."""
    import socket

    import uvicorn.config

    bind = uvicorn.config.Config.bind_socket
    if getattr(bind, "tokenrelay_nodelay", False):
        return

    def bind_socket(self: uvicorn.config.Config) -> socket.socket:
        sock = bind(self)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    bind_socket.tokenrelay_nodelay = True  # type: ignore[attr-defined]
    uvicorn.config.Config.bind_socket = bind_socket  # type: ignore[method-assign]
