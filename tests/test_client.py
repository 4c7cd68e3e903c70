"""The bundled client (`tokenrelay.client`) and the `tokenrelay stream` command.

Byte-level behaviour (a character split across TCP writes, a chunked body cut short) is shown
against a tiny raw socket server that writes exactly the bytes a test scripts; the command is
run as a subprocess against the real server fixture.
"""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from server_fixture import LiveServer, free_port, make_app
from tokenrelay.client import (
    IncompleteStreamError,
    TokenrelayConnectionError,
    TokenrelayHTTPError,
    _SSEParser,
    astream_events,
    astream_text,
    stream_cli,
    stream_events,
    stream_text,
)
from tokenrelay.testing import ScriptedBackend

ANSWER = '東京は日本の首都です。He said "hi" }\nline 2 ✓'


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def final(text: str) -> str:
    return json.dumps({"action": "Final Answer", "action_input": text}, ensure_ascii=False)


# --------------------------------------------------------------------------- a raw server

#: a step of a scripted response: bytes to write (one `sendall`), or seconds to sleep
Step = bytes | float


class RawServer:
    """Answers each connection with exactly the scripted writes, then closes the socket."""

    def __init__(self, steps: Sequence[Step]) -> None:
        self.steps = list(steps)
        self.requests: list[bytes] = []
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(8)
        self._sock.settimeout(0.02)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.requests.append(_read_request(conn))
                for step in self.steps:
                    if isinstance(step, bytes):
                        conn.sendall(step)
                    else:
                        time.sleep(step)

    def __enter__(self) -> RawServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()


def _read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        body += conn.recv(65536)
    return head + b"\r\n\r\n" + body


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


TEXT_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain; charset=utf-8\r\ntransfer-encoding: chunked\r\n"
SSE_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n"
END = b"0\r\n\r\n"


# --------------------------------------------------------------------------- UTF-8


def test_a_character_split_across_tcp_writes_comes_out_whole() -> None:
    ko = "こ".encode()  # 3 bytes
    steps: list[Step] = [
        TEXT_HEAD + b"x-session-id: s_1\r\nx-run-id: run_1\r\n\r\n",
        chunk(b"ab" + ko[:1]),
        0.15,
        chunk(ko[1:] + "んにちは".encode()[:4]),
        0.15,
        chunk("んにちは".encode()[4:] + b"!"),
        END,
    ]
    with RawServer(steps) as server:
        stream = stream_text(server.url, "hi", session_id="s_1", api_key="k")
        pieces = list(stream)
    assert "".join(pieces) == "abこんにちは!"
    assert pieces[0] == "ab"  # streamed as it came, the half character held back
    assert all("\ufffd" not in p for p in pieces)
    assert (stream.session_id, stream.run_id, stream.text) == ("s_1", "run_1", "abこんにちは!")
    request = server.requests[0]
    assert request.startswith(b"POST /chat HTTP/1.1")
    assert b"\r\nauthorization: bearer k\r\n" in request.lower()
    assert json.loads(request.partition(b"\r\n\r\n")[2]) == {"text": "hi", "session_id": "s_1"}


def test_every_split_of_a_multibyte_body_decodes_the_same() -> None:
    data = ANSWER.encode()
    for cut in range(1, len(data)):
        steps: list[Step] = [TEXT_HEAD + b"\r\n", chunk(data[:cut]), 0.002, chunk(data[cut:]), END]
        with RawServer(steps) as server:
            assert "".join(stream_text(server.url, "q")) == ANSWER, cut
        if cut > 8:
            break  # enough splits through the first multi-byte characters; the rest is the same code


@pytest.mark.anyio
async def test_async_text_stream_decodes_split_characters() -> None:
    ko = "東京".encode()
    steps: list[Step] = [TEXT_HEAD + b"\r\n", chunk(ko[:2]), 0.1, chunk(ko[2:4]), 0.1, chunk(ko[4:]), END]
    with RawServer(steps) as server:
        pieces = [piece async for piece in astream_text(server.url, "q")]
    assert "".join(pieces) == "東京" and "\ufffd" not in "".join(pieces)


# --------------------------------------------------------------------------- incomplete bodies


def test_a_chunked_body_cut_short_raises_incomplete_with_the_partial_text() -> None:
    steps: list[Step] = [TEXT_HEAD + b"\r\n", chunk("部分的な".encode()), chunk(b" answer")]  # no terminator
    with RawServer(steps) as server:
        received = []
        with pytest.raises(IncompleteStreamError) as info:
            for piece in stream_text(server.url, "q"):
                received.append(piece)
    assert info.value.partial_text == "部分的な answer" == "".join(received)
    assert str(info.value) == "the stream ended before the answer was complete"


def test_a_cut_inside_a_character_still_raises_incomplete() -> None:
    steps: list[Step] = [TEXT_HEAD + b"\r\n", chunk(b"ok " + "東".encode()[:2])]
    with RawServer(steps) as server, pytest.raises(IncompleteStreamError) as info:
        list(stream_text(server.url, "q"))
    assert info.value.partial_text.startswith("ok ")


def test_a_content_length_body_cut_short_raises_incomplete() -> None:
    steps: list[Step] = [
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 100\r\n\r\nonly this"
    ]
    with RawServer(steps) as server, pytest.raises(IncompleteStreamError) as info:
        list(stream_text(server.url, "q"))
    assert info.value.partial_text == "only this"


@pytest.mark.anyio
async def test_async_incomplete_stream() -> None:
    steps: list[Step] = [TEXT_HEAD + b"\r\n", chunk(b"half")]
    with RawServer(steps) as server, pytest.raises(IncompleteStreamError) as info:
        async for _ in astream_text(server.url, "q"):
            pass
    assert info.value.partial_text == "half"


def test_a_read_timeout_is_an_incomplete_stream() -> None:
    steps: list[Step] = [TEXT_HEAD + b"\r\n", chunk(b"slow"), 0.6, END]
    with RawServer(steps) as server, pytest.raises(IncompleteStreamError) as info:
        list(stream_text(server.url, "q", timeout=0.2))
    assert info.value.partial_text == "slow"
    assert "0.2 s" in str(info.value)


# --------------------------------------------------------------------------- HTTP errors


def test_an_error_status_raises_with_the_server_message() -> None:
    body = json.dumps({"error": {"message": "no session 's_x'", "type": "invalid_request_error"}}).encode()
    head = f"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    with RawServer([head.encode() + body]) as server, pytest.raises(TokenrelayHTTPError) as info:
        list(stream_text(server.url, "q"))
    assert (info.value.status, info.value.message) == (404, "no session 's_x'")
    assert str(info.value) == "HTTP 404: no session 's_x'"


def test_an_error_status_without_json_uses_the_body_text() -> None:
    body = b"<html>\n  Bad Gateway\n</html>"
    head = f"HTTP/1.1 502 Bad Gateway\r\ncontent-length: {len(body)}\r\n\r\n".encode()
    with RawServer([head + body]) as server, pytest.raises(TokenrelayHTTPError) as info:
        list(stream_events(server.url, "q"))
    assert info.value.status == 502
    assert "\n" not in str(info.value) and "Bad Gateway" in info.value.message


def test_an_unreachable_server_is_a_connection_error() -> None:
    with pytest.raises(TokenrelayConnectionError, match="cannot reach the server"):
        list(stream_text(f"http://127.0.0.1:{free_port()}", "q"))
    with pytest.raises(TokenrelayConnectionError, match="invalid server URL"):
        list(stream_text("localhost-without-scheme", "q"))


# --------------------------------------------------------------------------- SSE


def _frames(data: bytes, *splits: int) -> list[tuple[str, str]]:
    parser = _SSEParser()
    out: list[tuple[str, str]] = []
    last = 0
    for cut in [*splits, len(data)]:
        out += parser.feed(data[last:cut])
        last = cut
    return out + parser.finish()


def test_sse_parser_follows_the_standard_at_any_split() -> None:
    data = (
        ": keep-alive\r\n\r\n"
        'id: 0\r\nevent: run_started\r\ndata: {"a": 1}\r\n\r\n'
        'event: answer_delta\rdata: {"text": "x\u2028y\x85z 東"}\r\r'
        "event: multi\ndata: line1\ndata:line2\n\n"
        "data: no event name\n\n"
        "event: unterminated\ndata: dropped"
    ).encode()
    expected = [
        ("run_started", '{"a": 1}'),
        ("answer_delta", '{"text": "x\u2028y\x85z 東"}'),
        ("multi", "line1\nline2"),
        ("message", "no event name"),
    ]
    assert _frames(data) == expected
    for cut in range(1, len(data)):
        assert _frames(data, cut) == expected, cut
    assert _frames(data, *range(1, len(data))) == expected  # byte by byte


def test_sse_a_final_cr_still_ends_the_event() -> None:
    assert _frames(b"data: x\r\r") == [("message", "x")]
    assert _frames(b"data: x\r\r\n", 8) == [("message", "x")]


def _sse(event: str, data: dict[str, Any], event_id: int) -> bytes:
    return f"id: {event_id}\nevent: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def test_stream_events_stops_at_the_terminal_event() -> None:
    body = (
        _sse("run_started", {"type": "run_started"}, 0)
        + b": keep-alive\n\n"
        + _sse("answer_delta", {"type": "answer_delta", "text": "東"}, 1)
        + _sse("run_finished", {"type": "run_finished", "answer": "東"}, 2)
    )
    steps: list[Step] = [SSE_HEAD + b"\r\n", chunk(body[:37]), 0.05, chunk(body[37:]), END]
    with RawServer(steps) as server:
        stream = stream_events(server.url, "q", mode="full")
        events = list(stream)
    assert [e for e, _ in events] == ["run_started", "answer_delta", "run_finished"]
    assert events[-1][1]["answer"] == "東"
    assert stream.last_event_id == "2"
    request = server.requests[0]
    assert request.startswith(b"POST /chat/events HTTP/1.1")
    assert json.loads(request.partition(b"\r\n\r\n")[2]) == {"text": "q", "mode": "full"}


def test_stream_events_without_a_terminal_event_is_incomplete() -> None:
    body = _sse("run_started", {"type": "run_started"}, 0) + _sse("answer_delta", {"text": "部分"}, 1)
    for steps in ([SSE_HEAD + b"\r\n", chunk(body), END], [SSE_HEAD + b"\r\n", chunk(body)]):
        with RawServer(steps) as server, pytest.raises(IncompleteStreamError) as info:
            list(stream_events(server.url, "q"))
        assert info.value.partial_text == "部分"


@pytest.mark.anyio
async def test_async_stream_events() -> None:
    body = _sse("answer_delta", {"text": "a"}, 0) + _sse("error", {"message": "boom", "code": "backend"}, 1)
    steps: list[Step] = [SSE_HEAD + b"\r\n", chunk(body), END]
    with RawServer(steps) as server:
        events = [e async for e in astream_events(server.url, "q")]
    assert events == [("answer_delta", {"text": "a"}), ("error", {"message": "boom", "code": "backend"})]


# --------------------------------------------------------------------------- stream_cli, in process


def test_stream_cli_in_process() -> None:
    steps: list[Step] = [TEXT_HEAD + b"\r\n", chunk("答え".encode()[:4]), chunk("答え".encode()[4:]), END]
    out, err = io.StringIO(), io.StringIO()
    with RawServer(steps) as server:
        assert stream_cli(server.url, "q", out=out, err=err) == 0
    assert (out.getvalue(), err.getvalue()) == ("答え\n", "")

    out, err = io.StringIO(), io.StringIO()
    with RawServer([TEXT_HEAD + b"\r\n", chunk(b"part")]) as server:
        assert stream_cli(server.url, "q", out=out, err=err) == 1
    assert out.getvalue() == "part\n"
    assert err.getvalue() == "tokenrelay: error: the stream ended before the answer was complete\n"

    out, err = io.StringIO(), io.StringIO()
    assert stream_cli("http://127.0.0.1:1", "   ", out=out, err=err) == 1
    assert err.getvalue() == "tokenrelay: error: the prompt is empty\n"


# --------------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A real server: 'fail' in the prompt makes the scripted model fail mid-answer."""
    failing = ScriptedBackend([final(ANSWER)], token_size=3, fail_after=20)
    normal = ScriptedBackend([final(ANSWER)], token_size=3)

    class Switch(ScriptedBackend):
        def stream(self, messages: Any, **kwargs: Any) -> Any:
            chosen = failing if "fail" in messages[-1].content else normal
            return chosen.stream(messages, **kwargs)

    app = make_app(tmp_path_factory.mktemp("cli") / "t.db", Switch(), api_keys=frozenset({"k1"}))
    with LiveServer(app) as server:
        yield server


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "TOKENRELAY_API_KEY"}
    environment.update(PYTHONIOENCODING="utf-8", **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "tokenrelay.cli", "stream", *args],
        capture_output=True, text=True, encoding="utf-8", env=environment, timeout=60,
        cwd=Path(__file__).parent,
    )  # fmt: skip


def test_cli_stream_prints_the_answer(live_server: LiveServer) -> None:
    done = run_cli("What is the capital of Japan?", "--url", live_server.url, "--api-key", "k1")
    assert (done.returncode, done.stdout, done.stderr) == (0, ANSWER + "\n", "")


def test_cli_stream_takes_the_key_from_the_environment(live_server: LiveServer) -> None:
    done = run_cli("hi", "--url", live_server.url + "/", env={"TOKENRELAY_API_KEY": "k1"})
    assert (done.returncode, done.stdout) == (0, ANSWER + "\n")
    missing = run_cli("hi", "--url", live_server.url)
    assert missing.returncode == 1 and missing.stdout == ""
    assert missing.stderr.startswith("tokenrelay: error: HTTP 401: ") and missing.stderr.count("\n") == 1


def test_cli_stream_reports_an_incomplete_answer(live_server: LiveServer) -> None:
    done = run_cli("please fail", "--url", live_server.url, "--api-key", "k1")
    assert done.returncode == 1
    assert done.stdout.strip() and ANSWER.startswith(done.stdout[:-1]) and done.stdout.endswith("\n")
    assert done.stderr == "tokenrelay: error: the stream ended before the answer was complete\n"


def test_cli_stream_unreachable_server_is_one_line() -> None:
    done = run_cli("hi", "--url", f"http://127.0.0.1:{free_port()}")
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("tokenrelay: error: cannot reach the server at http://127.0.0.1:")
    assert done.stderr.count("\n") == 1
