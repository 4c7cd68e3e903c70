"""Slow and greedy clients against a real uvicorn server over real sockets, on both of
uvicorn's HTTP stacks (h11 and httptools), with the protocol classes `tokenrelay serve` uses.

Each test is one finding of the outside attack: silent and slow-header connections held for
minutes, half-sent bodies pinning memory, unauthenticated clients making the server read
their bodies, and idle connections piling up without bound.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from server_fixture import LiveServer, make_app, rss_bytes, wait_until
from tokenrelay.server.protocol import GUARDED_HTTPTOOLS, GuardedH11Protocol
from tokenrelay.testing import ScriptedBackend

STACKS = {"h11": GuardedH11Protocol, "httptools": GUARDED_HTTPTOOLS}
REPLY = json.dumps({"action": "Final Answer", "action_input": "slow and steady"})


@pytest.fixture(params=sorted(STACKS))
def stack(request: pytest.FixtureRequest) -> Any:
    if STACKS[request.param] is None:
        pytest.skip("httptools is not installed")
    return STACKS[request.param]


@pytest.fixture
def serve(tmp_path: Path, stack: Any) -> Iterator[Callable[..., LiveServer]]:
    servers: list[LiveServer] = []

    def start(backend: Any = None, **settings: Any) -> LiveServer:
        backend = backend or ScriptedBackend(replies=[REPLY])
        server = LiveServer(make_app(tmp_path / "slow.db", backend, **settings), http=stack).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def _held(server: LiveServer) -> int:
    """Connections the server holds now (uvicorn's own count)."""
    return len(server.server.server_state.connections)


def _closed_by_server(sock: socket.socket, timeout: float) -> bytes | None:
    """What the server sent before closing `sock` within `timeout` (None: still open)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return data
            data += chunk
    except TimeoutError:
        return None
    except ConnectionResetError:
        return data


def _connect(server: LiveServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=5)


def test_silent_and_slow_header_connections_are_closed(serve: Callable[..., LiveServer]) -> None:
    server = serve(header_timeout_s=1.0)
    silent = [_connect(server) for _ in range(10)]
    slow = [_connect(server) for _ in range(10)]
    stop = threading.Event()

    def trickle() -> None:  # one byte of a head every 0.2 s: each byte used to reset the clock
        head = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 200
        for byte in head:
            if stop.is_set():
                return
            for s in slow:
                try:
                    s.send(bytes([byte]))
                except OSError:
                    pass
            time.sleep(0.2)

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        assert wait_until(lambda: _held(server) == 20, timeout=5)
        for s in silent + slow:
            answer = _closed_by_server(s, timeout=5)
            assert answer is not None, "the server still holds a connection with no complete head"
            assert answer == b"" or answer.startswith(b"HTTP/1.1 408")
        assert wait_until(lambda: _held(server) == 0, timeout=5)
    finally:
        stop.set()
        thread.join()
        for s in silent + slow:
            s.close()


def test_a_complete_head_is_not_timed_out_while_it_streams(serve: Callable[..., LiveServer]) -> None:
    backend = ScriptedBackend(replies=[REPLY], tokens_per_second=4, token_size=4)
    server = serve(backend, header_timeout_s=0.5)
    with httpx.Client(timeout=30) as client:
        t0 = time.monotonic()
        text = client.post(server.url + "/chat", json={"text": "take your time"}).text
        assert text == "slow and steady"
        assert time.monotonic() - t0 > 1.0  # the answer took longer than the head deadline
        # the same keep-alive connection serves the next request
        assert client.get(server.url + "/health").status_code == 200


def test_an_idle_keep_alive_connection_gets_the_same_deadline(serve: Callable[..., LiveServer]) -> None:
    server = serve(header_timeout_s=1.0)
    sock = _connect(server)
    try:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        sock.settimeout(5)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Half: ")  # and never the rest
        assert _closed_by_server(sock, timeout=5) is not None
    finally:
        sock.close()


def test_a_slow_body_is_cut_off_with_408(serve: Callable[..., LiveServer]) -> None:
    server = serve(body_timeout_s=1.0)
    sock = _connect(server)
    try:
        sock.sendall(
            b"POST /chat HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000000\r\n\r\n" + b'{"text": "' + b"x" * 500_000
        )
        answer = _closed_by_server(sock, timeout=8)
        assert answer is not None, "a half-sent body was held past body_timeout_s"
        assert answer.startswith(b"HTTP/1.1 408")
        assert b'"body_timeout"' in answer
    finally:
        sock.close()
    assert wait_until(lambda: _held(server) == 0, timeout=5)


def test_an_unauthenticated_body_is_refused_before_it_is_read(serve: Callable[..., LiveServer]) -> None:
    server = serve(api_keys=frozenset({"k-right"}))
    sock = _connect(server)
    try:
        sock.sendall(
            b"POST /chat HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000000\r\nAuthorization: Bearer k-wrong\r\n\r\n"
        )  # not one byte of the body: the 401 must not wait for it
        answer = _closed_by_server(sock, timeout=5)
        assert answer is not None and answer.startswith(b"HTTP/1.1 401")
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["type"] == "authentication_error"
    finally:
        sock.close()


def test_unauthenticated_bodies_pin_no_memory(serve: Callable[..., LiveServer]) -> None:
    """The attack: 150 connections without a key, each 0.98 MB into a 1 MB body, then silence
    (147 MB held before the fix). Here 60 of them, and RSS may grow by far less than that."""
    server = serve(api_keys=frozenset({"k-right"}))
    before = rss_bytes()
    socks = []
    chunk = b"x" * 65536
    try:
        for _ in range(60):
            s = _connect(server)
            s.sendall(
                b"POST /chat HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: 1000000\r\n\r\n"
            )
            sent = 0
            try:
                while sent < 980_000:
                    s.sendall(chunk)
                    sent += len(chunk)
            except OSError:
                pass  # refused and closed: what should happen
            socks.append(s)
        time.sleep(0.5)
        assert rss_bytes() - before < 20_000_000
        assert wait_until(lambda: _held(server) == 0, timeout=5)
    finally:
        for s in socks:
            s.close()


def test_bodies_read_at_once_are_capped(serve: Callable[..., LiveServer]) -> None:
    server = serve(max_buffered_body_bytes=2_000_000, body_timeout_s=5.0)
    socks = []
    answers = []
    try:
        for _ in range(4):  # 4 x 0.9 MB half-sent bodies against a 2 MB budget
            s = _connect(server)
            s.sendall(
                b"POST /chat HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: 1000000\r\n\r\n" + b"x" * 900_000
            )
            socks.append(s)
        for s in socks:
            answers.append(_closed_by_server(s, timeout=1.0))
        refused = [a for a in answers if a is not None and a.startswith(b"HTTP/1.1 503")]
        assert len(refused) == 2
        assert all(b"retry-after: 1" in a.lower() for a in refused)
    finally:
        for s in socks:
            s.close()


def test_connections_waiting_for_a_head_are_capped(serve: Callable[..., LiveServer]) -> None:
    server = serve(max_pending_connections=10, header_timeout_s=30.0)
    socks = [_connect(server) for _ in range(30)]
    try:
        assert wait_until(lambda: _held(server) <= 10, timeout=5)
        time.sleep(0.3)
        assert _held(server) <= 10
        # the newest are the ones kept; a real request still gets through
        assert httpx.get(server.url + "/health", timeout=5).status_code == 200
    finally:
        for s in socks:
            s.close()


def test_an_oversized_head_gets_431(serve: Callable[..., LiveServer]) -> None:
    server = serve(max_head_bytes=8192)
    sock = _connect(server)
    try:
        sock.sendall(
            b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-Big: " + b"a" * 20_000 + b"\r\n\r\n"
        )
        answer = _closed_by_server(sock, timeout=5)
        assert answer is not None and answer.startswith((b"HTTP/1.1 431", b"HTTP/1.1 400"))
    finally:
        sock.close()
