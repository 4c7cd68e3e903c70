"""The server's event loop: uvloop, with TCP listeners that accept every pending connection
per wake-up.

Why: since libuv 1.45 ("unix: don't accept() connections in a loop", vendored by uvloop from
0.18 on) a uvloop TCP server accepts ONE connection per event-loop iteration. With a thousand
streams in flight an iteration runs thousands of callbacks (a few ms), so a burst of new
connections drains at a few hundred per second: they wait in the kernel's backlog, their
time to first byte grows by a second or more, and once the backlog is full the kernel drops
SYNs (clients retry after 1 s, 3 s). asyncio's own loop accepts up to `backlog` connections
per wake-up and has no such stall, but is slower for everything else.

`DrainLoop` keeps uvloop for everything and replaces only the accepting: its `create_server`
binds plain TCP listeners itself, watches them with `add_reader`, and on each wake-up accepts
until the kernel has no more (at most `backlog`), handing each socket to uvloop's
`connect_accepted_socket`, which makes the same transport uvloop's own server would.

Invariants: anything this does not handle (TLS, Unix sockets, `start_serving=False`) goes to
uvloop's own `create_server` unchanged; `event_loop()` returns plain asyncio's loop where
uvloop is not installed (Windows, PyPy), so the server runs everywhere.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable, Iterable, Sequence
from typing import Any

__all__ = ["DrainLoop", "DrainServer", "event_loop", "uvloop_available"]

log = logging.getLogger("tokenrelay.server")

#: accept() errors that mean "no resources now": stop accepting for a moment, as asyncio does
_PAUSE_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_PAUSE_S = 1.0

try:
    import uvloop as _uvloop
except ImportError:  # pragma: no cover - Windows, PyPy, or not installed
    _uvloop = None  # type: ignore[assignment]


def uvloop_available() -> bool:
    """Whether uvloop is importable here (it is a dependency except on Windows and PyPy)."""
    return _uvloop is not None


class DrainServer(asyncio.AbstractServer):
    """The `asyncio.Server` face of DrainLoop's listeners (what uvicorn keeps and closes)."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, socks: Sequence[socket.socket], accept: Callable[..., None]
    ) -> None:
        self._loop = loop
        self._socks = list(socks)
        self._accept = accept
        self._serving = False
        self._closed = asyncio.Event()

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return tuple(self._socks)

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return self._serving

    async def start_serving(self) -> None:
        self.resume()

    def resume(self) -> None:
        """Watch every listener (again): after start, or after a pause for lack of file descriptors."""
        if self._serving or self._closed.is_set():
            return
        self._serving = True
        for sock in self._socks:
            self._loop.add_reader(sock.fileno(), self._accept, sock, self)

    def pause(self) -> None:
        if not self._serving:
            return
        self._serving = False
        for sock in self._socks:
            self._loop.remove_reader(sock.fileno())

    def close(self) -> None:
        if self._closed.is_set():
            return
        self.pause()
        self._closed.set()
        for sock in self._socks:
            sock.close()
        self._socks = []

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def serve_forever(self) -> None:
        self.resume()
        await asyncio.Future()


if _uvloop is not None:
    _Base: Any = _uvloop.Loop
else:  # pragma: no cover
    _Base = asyncio.SelectorEventLoop


class DrainLoop(_Base):  # type: ignore[misc]
    """uvloop's loop whose TCP servers accept all pending connections per wake-up (module doc)."""

    async def create_server(
        self,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        host: str | Sequence[str] | None = None,
        port: int | None = None,
        *,
        family: int = socket.AF_UNSPEC,
        flags: int = socket.AI_PASSIVE,
        sock: socket.socket | None = None,
        backlog: int = 100,
        ssl: Any = None,
        reuse_address: bool | None = None,
        reuse_port: bool | None = None,
        start_serving: bool = True,
        **kwargs: Any,
    ) -> asyncio.AbstractServer:
        plain_tcp = ssl is None and not kwargs and start_serving
        if sock is not None:
            plain_tcp = plain_tcp and sock.family in (socket.AF_INET, socket.AF_INET6) and host is None
        if not plain_tcp:
            return await super().create_server(  # type: ignore[no-any-return]
                protocol_factory, host, port, family=family, flags=flags, sock=sock, backlog=backlog,
                ssl=ssl, reuse_address=reuse_address, reuse_port=reuse_port,
                start_serving=start_serving, **kwargs,
            )  # fmt: skip
        if sock is not None:
            socks = [sock]
        else:
            socks = await self._bind(host, port, family, flags, reuse_address, reuse_port)
        for s in socks:
            s.setblocking(False)
            s.listen(backlog)
        accept = _Acceptor(self, protocol_factory, backlog)
        server = DrainServer(self, socks, accept)
        server.resume()
        return server

    async def _bind(
        self,
        host: str | Sequence[str] | None,
        port: int | None,
        family: int,
        flags: int,
        reuse_address: bool | None,
        reuse_port: bool | None,
    ) -> list[socket.socket]:
        """Bound (not yet listening) sockets for host(s) and port, as asyncio binds them."""
        hosts: Iterable[str | None] = [host] if host is None or isinstance(host, str) else host
        infos: set[tuple[Any, ...]] = set()
        for h in hosts:
            infos.update(
                await self.getaddrinfo(h or None, port, family=family, type=socket.SOCK_STREAM, flags=flags)
            )
        if not infos:
            raise OSError(f"getaddrinfo({host!r}) returned an empty list")
        socks: list[socket.socket] = []
        try:
            for af, kind, proto, _name, address in sorted(infos, key=lambda i: i[0] != socket.AF_INET):
                s = socket.socket(af, kind, proto)
                socks.append(s)
                if reuse_address is not False:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if reuse_port:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if af == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                try:
                    s.bind(address)
                except OSError as exc:
                    raise OSError(
                        exc.errno, f"error while attempting to bind on address {address!r}: {exc.strerror}"
                    ) from None
        except BaseException:
            for s in socks:
                s.close()
            raise
        return socks


class _Acceptor:
    """The reader callback of a listener: accept until the kernel has none (at most `backlog`)."""

    def __init__(self, loop: Any, factory: Callable[[], asyncio.BaseProtocol], backlog: int) -> None:
        self.loop = loop
        self.factory = factory
        self.backlog = max(1, backlog)
        self.pending: set[asyncio.Task[Any]] = set()

    def __call__(self, listener: socket.socket, server: DrainServer) -> None:
        for _ in range(self.backlog):
            try:
                conn, _addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # the client gave up before we got to it
            except OSError as exc:
                if exc.errno in _PAUSE_ERRNOS:  # out of descriptors or memory: let some close first
                    log.warning("accept() failed (%s): pausing new connections for %.0f s", exc, _PAUSE_S)
                    server.pause()
                    self.loop.call_later(_PAUSE_S, server.resume)
                else:  # as asyncio does: report it, keep listening
                    self.loop.call_exception_handler(
                        {"message": "accept() failed", "exception": exc, "socket": listener}
                    )
                return
            try:
                conn.setblocking(False)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # the connection died already
                conn.close()
                continue
            task = self.loop.create_task(self._connect(conn))
            self.pending.add(task)
            task.add_done_callback(self.pending.discard)

    async def _connect(self, conn: socket.socket) -> None:
        """uvloop's transport for `conn`, with the server's protocol (as its own server makes)."""
        try:
            await self.loop.connect_accepted_socket(self.factory, conn)
        except Exception as exc:  # the protocol or the transport could not be set up
            conn.close()
            log.debug("an accepted connection could not be set up: %r", exc)


def event_loop() -> asyncio.AbstractEventLoop:
    """A new event loop for a server process: `DrainLoop` (uvloop) where uvloop is installed,
    else asyncio's default loop. It is also uvicorn's `loop` factory (`tokenrelay.server:event_loop`)."""
    if _uvloop is not None:
        return DrainLoop()
    return asyncio.new_event_loop()
