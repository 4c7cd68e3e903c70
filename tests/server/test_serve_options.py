"""How tokenrelay runs uvicorn: `uvicorn_options` (httptools with the head limits, DrainLoop,
backlog, no access log) reaches uvicorn from `tokenrelay serve`, and DrainLoop
(server/loop.py) accepts a burst of connections at once, serves HTTP, and falls back where it
cannot help. No timing assertions: counts of event-loop turns only."""

from __future__ import annotations

import asyncio
import errno
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import uvicorn

import tokenrelay.server as server_pkg
import tokenrelay.server.loop as loop_mod
from tokenrelay.config import Settings
from tokenrelay.server import event_loop, uvicorn_options
from tokenrelay.server.loop import DrainLoop, DrainServer
from tokenrelay.server.protocol import GuardedHttpToolsProtocol

uvloop = pytest.importorskip("uvloop")


def _run(main: Callable[[], Any]) -> Any:
    with asyncio.Runner(loop_factory=event_loop) as runner:
        return runner.run(main())


def test_options_pick_httptools_the_drain_loop_a_deep_backlog_and_no_access_log() -> None:
    options = uvicorn_options(Settings(model="scripted", log_level="warning"))
    assert options["http"] == "tokenrelay.server.protocol:GuardedHttpToolsProtocol"
    assert options["loop"] == "tokenrelay.server:event_loop"
    assert options["backlog"] == 4096
    assert options["access_log"] is False
    assert options["log_level"] == "warning"
    assert uvicorn_options(Settings(model="scripted"), access_log=True)["access_log"] is True

    config = uvicorn.Config("tokenrelay.server:create_app_from_env", factory=True, **options)
    assert config.get_loop_factory() is event_loop  # uvicorn >= 0.36 takes the import string
    assert uvicorn.importer.import_from_string(options["http"]) is GuardedHttpToolsProtocol


def test_serve_hands_the_options_to_uvicorn(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(kw, app=app))
    for name in ("TOKENRELAY_MODEL", "TOKENRELAY_LOG_LEVEL", "TOKENRELAY_HOST"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings(model="scripted", port=8123, log_level="info")
    assert server_pkg.serve(settings) == 0
    assert seen["app"] == "tokenrelay.server:create_app_from_env"
    assert seen["port"] == 8123 and seen["workers"] == 1
    assert {k: seen[k] for k in ("http", "loop", "backlog", "access_log")} == {
        "http": "tokenrelay.server.protocol:GuardedHttpToolsProtocol",
        "loop": "tokenrelay.server:event_loop",
        "backlog": 4096,
        "access_log": False,
    }


def test_event_loop_is_the_drain_loop_and_asyncio_without_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = event_loop()
    try:
        assert isinstance(loop, DrainLoop) and isinstance(loop, uvloop.Loop)
    finally:
        loop.close()
    monkeypatch.setattr(loop_mod, "_uvloop", None)
    loop = event_loop()
    try:
        assert not isinstance(loop, uvloop.Loop)
        assert isinstance(loop, asyncio.AbstractEventLoop)
    finally:
        loop.close()


class _Counting(asyncio.Protocol):
    made: list[asyncio.BaseTransport]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.made.append(transport)


def _burst(port: int, n: int) -> list[socket.socket]:
    """`n` connections the kernel has completed and queued (none accepted yet)."""
    clients = []
    for _ in range(n):
        client = socket.create_connection(("127.0.0.1", port))
        clients.append(client)
    return clients


@pytest.mark.parametrize("bind", ["host", "sock"])
def test_a_burst_of_connections_is_accepted_in_a_few_loop_turns(bind: str) -> None:
    """uvloop alone accepts one connection per loop turn (libuv >= 1.45); DrainLoop takes
    every pending one on the first wake-up (200 here), ready a few turns later."""

    async def main() -> int:
        loop = asyncio.get_running_loop()
        made: list[asyncio.BaseTransport] = []
        _Counting.made = made
        if bind == "host":
            server = await loop.create_server(_Counting, "127.0.0.1", 0, backlog=1024)
        else:
            listener = socket.socket()
            listener.bind(("127.0.0.1", 0))
            server = await loop.create_server(_Counting, sock=listener, backlog=1024)
        assert isinstance(server, DrainServer) and server.is_serving()
        port = server.sockets[0].getsockname()[1]
        clients = _burst(port, 200)  # blocking on purpose: all 200 queue before the loop runs
        for _ in range(10):  # loop turns, not time
            await asyncio.sleep(0)
        count = len(made)
        for transport in made:
            transport.close()
        for client in clients:
            client.close()
        server.close()
        await server.wait_closed()
        assert not server.is_serving() and server.sockets == ()
        return count

    assert _run(main) == 200  # uvloop's own server: at most one per turn, so at most ten


def test_what_drain_loop_does_not_handle_goes_to_uvloop() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0, start_serving=False)
        assert not isinstance(server, DrainServer)  # uvloop's own server
        server.close()
        await server.wait_closed()

    _run(main)


def test_a_connection_whose_protocol_fails_is_closed_and_the_next_is_served() -> None:
    calls: list[int] = []

    class Flaky(asyncio.Protocol):
        def __init__(self) -> None:
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("the protocol could not be made")

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            transport.write(b"ok")  # type: ignore[attr-defined]
            transport.close()

    async def main() -> tuple[bytes, bytes]:
        server = await asyncio.get_running_loop().create_server(Flaky, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        replies = []
        for _ in range(2):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            replies.append(await asyncio.wait_for(reader.read(), 10))
            writer.close()
        server.close()
        return replies[0], replies[1]

    assert _run(main) == (b"", b"ok")


def test_out_of_descriptors_pauses_accepting_and_resumes() -> None:
    class Listener:
        def accept(self) -> Any:
            raise OSError(errno.EMFILE, "Too many open files")

        def fileno(self) -> int:
            return -1

    later: list[tuple[float, Any]] = []

    class Loop:
        def call_later(self, delay: float, callback: Any) -> None:
            later.append((delay, callback))

    class Server:
        paused = False

        def pause(self) -> None:
            self.paused = True

        def resume(self) -> None:
            self.paused = False

    server = Server()
    loop_mod._Acceptor(Loop(), asyncio.Protocol, 100)(Listener(), server)  # type: ignore[arg-type]
    assert server.paused and len(later) == 1
    later[0][1]()
    assert not server.paused


@pytest.fixture
def live() -> Iterator[str]:
    """A tiny ASGI app under uvicorn with `uvicorn_options` (the DrainLoop + httptools)."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = type(asyncio.get_running_loop()).__name__.encode()
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
        )
        await send({"type": "http.response.body", "body": body})

    options = uvicorn_options(Settings(model="scripted", log_level="warning"))
    options.pop("log_config")
    config = uvicorn.Config(app, host="127.0.0.1", port=0, **options)
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        threading.Event().wait(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_uvicorn_serves_on_the_drain_loop(live: str) -> None:
    with httpx.Client() as client:
        replies = [client.get(live + "/").text for _ in range(3)]
    assert replies == ["DrainLoop"] * 3
