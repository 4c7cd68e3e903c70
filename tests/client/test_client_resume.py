"""The bundled client over a real server whose connections are cut mid-answer.

A small TCP proxy between the client and a real uvicorn server forwards every byte, except
that it cuts the first connections after N bytes of response body (a FIN, or a TCP reset).
The client must resume the run and yield the exact answer (Japanese, emoji, quotes, braces,
backslashes, newlines), every character once; and a client that leaves on purpose must stop
the run it started resumable.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from replies import final
from server_fixture import LiveServer, make_app, wait_until
from tokenrelay.client import Reconnect, astream_text, stream_events, stream_text
from tokenrelay.events import AnswerDelta, Narration, RunFinished, RunStarted
from tokenrelay.testing import ScriptedBackend

ANSWER = '東京は日本の首都です 🗼🎌\n{"quote": "\\"hi\\""} C:\\path\\to\\ × ✓ — end'
RECONNECT_NOW = Reconnect(delay=0.05, attempts=3)


class CuttingProxy:
    """Forwards TCP connections to `port`; the i-th connection is cut after `cuts[i]` bytes of
    response body (counted after the first blank line), later ones are left whole."""

    def __init__(self, port: int, cuts: list[int], *, reset: bool = False) -> None:
        self.port = port
        self.cuts = cuts
        self.reset = reset
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []

    def __enter__(self) -> CuttingProxy:
        self._spawn(self._accept)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)
        for sock in self._sockets:
            sock.close()
        self._listener.close()

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            cut = self.cuts[self.connections] if self.connections < len(self.cuts) else None
            self.connections += 1
            upstream = socket.create_connection(("127.0.0.1", self.port))
            self._sockets += [client, upstream]
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.settimeout(0.2)
            self._spawn(self._pump, client, upstream, None, client, upstream)
            self._spawn(self._pump, upstream, client, cut, client, upstream)

    def _pump(
        self, source: socket.socket, sink: socket.socket, cut: int | None, *both: socket.socket
    ) -> None:
        head = b""
        body = 0  # body bytes forwarded (past the response head)
        try:
            while not self._stop.is_set():
                try:
                    data = source.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    sink.shutdown(socket.SHUT_WR)
                    return
                if cut is not None:
                    if b"\r\n\r\n" not in head:
                        head += data
                        if b"\r\n\r\n" not in head:
                            sink.sendall(data)
                            continue
                        end = head.index(b"\r\n\r\n") + 4
                        sink.sendall(data[: len(data) - (len(head) - end)])
                        data = head[end:]
                    if body + len(data) >= cut:
                        sink.sendall(data[: cut - body])
                        self._cut(*both)
                        return
                    body += len(data)
                sink.sendall(data)
        except OSError:  # the other side is gone (or was cut): stop both directions
            self._cut(*both)

    def _cut(self, client: socket.socket, upstream: socket.socket) -> None:
        """Close both ends (once: both pumps may get here); the client's with a reset if asked."""
        try:
            if self.reset and client.fileno() != -1:  # an RST instead of a FIN
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        for sock in (client, upstream):
            try:
                sock.close()
            except OSError:
                pass


@pytest.fixture
def backend() -> ScriptedBackend:
    # paced, so the run is still producing when the cut comes
    return ScriptedBackend([final(ANSWER)], tokens_per_second=150, token_size=2)


@pytest.fixture
def server(tmp_path: Path, backend: ScriptedBackend) -> Iterator[LiveServer]:
    with LiveServer(make_app(tmp_path / "t.db", backend)) as live:
        yield live


def stored_answer(server: LiveServer, session_id: str | None) -> tuple[str, str]:
    (turn,) = httpx.get(server.url + f"/sessions/{session_id}", timeout=10).json()["turns"]
    return turn["status"], turn["answer"]


@pytest.mark.parametrize("cut", [1, 9, 25, 60])
def test_a_text_stream_cut_mid_answer_yields_the_exact_answer_once(
    server: LiveServer, backend: ScriptedBackend, cut: int
) -> None:
    with CuttingProxy(server.port, [cut]) as proxy:
        stream = stream_text(proxy.url, "capital?", reconnect=RECONNECT_NOW)
        pieces, when = [], []
        for piece in stream:
            pieces.append(piece)
            when.append(stream.reconnects)
    assert "".join(pieces) == ANSWER and "\ufffd" not in "".join(pieces)
    assert when[-1] == 1 and (cut < 20 or when[0] == 0)  # past a few bytes, text came before the cut
    assert stream.reconnects == 1 and proxy.connections == 2
    assert len(backend.calls) == 1 and backend.calls[0].finished  # one run, not a second try
    assert wait_until(lambda: stored_answer(server, stream.session_id) == ("complete", ANSWER))


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
@pytest.mark.parametrize("cuts", [[400], [250, 500, 180]], ids=["once", "three-times"])
def test_an_event_stream_cut_mid_answer_yields_every_event_once(
    server: LiveServer, backend: ScriptedBackend, cuts: list[int], reset: bool
) -> None:
    with CuttingProxy(server.port, cuts, reset=reset) as proxy:
        stream = stream_events(proxy.url, "capital?", reconnect=RECONNECT_NOW)
        events, when = [], []
        for event in stream:
            events.append(event)
            when.append(stream.reconnects)
    assert stream.reconnects == len(cuts)
    deltas_at = {n for n, e in zip(when, events, strict=True) if isinstance(e, AnswerDelta)}
    assert 0 in deltas_at and max(deltas_at) > 0  # the answer was under way at the cut, and went on after
    assert [type(e) for e in events].count(RunStarted) == 1 and isinstance(events[0], RunStarted)
    assert isinstance(events[-1], RunFinished) and events[-1].answer == ANSWER
    assert "".join(e.text for e in events if isinstance(e, AnswerDelta)) == ANSWER
    assert not any(isinstance(e, Narration) for e in events)
    assert len(backend.calls) == 1


@pytest.mark.anyio
async def test_an_async_text_stream_cut_mid_answer(server: LiveServer) -> None:
    with CuttingProxy(server.port, [30], reset=True) as proxy:
        stream = astream_text(proxy.url, "capital?", reconnect=RECONNECT_NOW)
        text = "".join([piece async for piece in stream])
    assert text == ANSWER and stream.reconnects == 1


def test_the_stream_command_resumes_after_a_cut(server: LiveServer) -> None:
    environment = {k: v for k, v in os.environ.items() if k != "TOKENRELAY_API_KEY"}
    with CuttingProxy(server.port, [40]) as proxy:
        done = subprocess.run(
            [sys.executable, "-m", "tokenrelay.cli", "stream", "capital?", "--url", proxy.url],
            capture_output=True, text=True, encoding="utf-8", timeout=60,
            cwd=Path(__file__).resolve().parents[1],
            env={**environment, "PYTHONIOENCODING": "utf-8"},
        )  # fmt: skip
    assert (done.returncode, done.stdout, done.stderr) == (0, ANSWER + "\n", "")
    assert proxy.connections == 2


@pytest.mark.parametrize("face", ["close", "break"])
def test_leaving_early_stops_the_resumable_run(tmp_path: Path, face: str) -> None:
    """The run outlives a dropped connection, so a client that leaves must cancel it."""
    slow = ScriptedBackend([final(ANSWER * 4)], tokens_per_second=20, token_size=2)
    with LiveServer(make_app(tmp_path / "t.db", slow)) as server:
        stream = stream_events(server.url, "capital?")
        if face == "close":
            assert isinstance(next(stream), RunStarted)
            assert isinstance(next(stream), AnswerDelta)
            stream.close()
        else:
            with stream:
                for event in stream:
                    if isinstance(event, AnswerDelta):
                        break
        assert wait_until(lambda: slow.calls[-1].abandoned, 5), "the run went on"
        assert wait_until(lambda: stored_answer(server, stream.session_id)[0] == "interrupted")
