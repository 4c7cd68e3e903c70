"""Run a real uvicorn server for any ASGI app, in a background thread, on a free port.

Tests that care about streaming must talk to a real server over a real socket: httpx's
ASGITransport buffers the whole body, so it can show neither pacing, nor a disconnect, nor a
chunked body cut short. `LiveServer` gives every test that for the price of a context manager:

    with LiveServer(create_app(settings, backend=backend)) as server:
        httpx.get(server.url + "/health")

Invariants:

* the socket is bound (port 0, 127.0.0.1) before the thread starts, so `url` is valid at once
  and two servers never race for a port;
* `__enter__` returns only once the app's lifespan has run and the server accepts
  connections (or raises if it failed to start);
* `__exit__` stops the server even with streams still open (their tasks are cancelled after
  `graceful_s`), runs the lifespan shutdown, and joins the thread; an exception in the
  server's thread is re-raised in the test;
* uvicorn does not touch the process's logging configuration (`log_config=None`).

`run_in_loop(coro)` runs a coroutine on the server's event loop, for tests that need to look
at server-side state (a store, a registry) from the loop that owns it.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import uvicorn

from tokenrelay.server.protocol import GuardedH11Protocol

__all__ = ["LiveServer", "free_port", "make_app", "rss_bytes", "wait_until"]

T = TypeVar("T")


def rss_bytes(pid: int | str = "self") -> int:
    """Resident memory of a process (this one by default), from /proc."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")  # pragma: no cover


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.01) -> bool:
    """Poll `predicate` until it is true or `timeout` passes; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # pragma: no cover - older uvicorn only
        pass


class LiveServer:
    def __init__(
        self, app: Any, *, graceful_s: int = 2, start_timeout_s: float = 15.0, http: Any = None
    ) -> None:
        self.app = app
        self.graceful_s = graceful_s
        self.start_timeout_s = start_timeout_s
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app,
            log_config=None,
            log_level="warning",
            access_log=False,
            lifespan="on",
            ws="none",
            loop="asyncio",
            # the product's stack (`tokenrelay serve`): uvicorn's h11 with the head limits
            http=http or GuardedH11Protocol,
            timeout_graceful_shutdown=graceful_s,
            timeout_keep_alive=5,
        )
        self.server = _Server(config)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"uvicorn:{self.port}", daemon=True)

    def _run(self) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            await self.server.serve(sockets=[self._sock])

        try:
            asyncio.run(main())
        except BaseException as exc:  # surfaced by __exit__/start
            self._error = exc

    def start(self) -> LiveServer:
        self._thread.start()
        deadline = time.monotonic() + self.start_timeout_s
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the test server did not start: {self._error!r}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=self.graceful_s + 15)
        self._sock.close()
        if self._thread.is_alive():  # pragma: no cover - a hung shutdown
            self.server.force_exit = True
            self._thread.join(timeout=5)
            raise RuntimeError("the test server did not stop")
        if self._error is not None:
            raise self._error

    def run_in_loop(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        assert self.loop is not None, "the server is not running"
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def __enter__(self) -> LiveServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def make_app(db_path: Path | str, backend: Any, **settings: Any) -> Any:
    """A tokenrelay app on a SQLite file with an explicit backend (the app closes the store)."""
    from tokenrelay.config import Settings
    from tokenrelay.server.app import create_app

    return create_app(Settings(db=f"sqlite:///{db_path}", **settings), backend=backend)
