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

import httpx
import pytest

from replies import final
from server_fixture import LiveServer, free_port, make_app, wait_until
from tokenrelay.client import (
    IncompleteStreamError,
    Reconnect,
    TokenrelayClientError,
    TokenrelayConnectionError,
    TokenrelayHTTPError,
    astream_events,
    astream_text,
    stream_cli,
    stream_events,
    stream_text,
)
from tokenrelay.client._core import StreamCore
from tokenrelay.client._ops import Open, Read, Sleep
from tokenrelay.client._start import events_core
from tokenrelay.events import AnswerDelta, RunError, RunFinished, RunStarted, event_from_dict
from tokenrelay.testing import ScriptedBackend

ANSWER = '東京は日本の首都です。He said "hi" }\nline 2 ✓'


# --------------------------------------------------------------------------- a raw server

#: a step of a scripted response: bytes to write (one `sendall`), or seconds to sleep
Step = bytes | float

NOT_FOUND = (
    b"HTTP/1.1 404 Not Found\r\nconnection: close\r\ncontent-type: application/json\r\n"
    b"content-length: 41\r\n\r\n"
    b'{"error": {"message": "no run \'run_1\'"}}'
)

ACCEPTED = b"HTTP/1.1 202 Accepted\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"


class RawServer:
    """Answers the n-th connection with exactly the n-th script's writes, then closes the
    socket; connections beyond the scripts get a 404 (a run the server does not know)."""

    def __init__(self, *scripts: Sequence[Step]) -> None:
        self.scripts = [list(script) for script in scripts]
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
            n = len(self.requests)
            self.requests.append(b"")
            script = self.scripts[n] if n < len(self.scripts) else [NOT_FOUND]
            # one thread per connection: a script that stalls must not hold up the next one
            threading.Thread(target=self._answer, args=(conn, n, script), daemon=True).start()

    def _answer(self, conn: socket.socket, n: int, script: list[Step]) -> None:
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.requests[n] = _read_request(conn)
            try:
                for step in script:
                    if isinstance(step, bytes):
                        conn.sendall(step)
                    else:
                        time.sleep(step)
            except OSError:  # the client hung up first
                pass

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


OK_HEAD = b"HTTP/1.1 200 OK\r\nconnection: close\r\ntransfer-encoding: chunked\r\n"
TEXT_HEAD = OK_HEAD + b"content-type: text/plain; charset=utf-8\r\n"
SSE_HEAD = OK_HEAD + b"content-type: text/event-stream\r\n"
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
    body = {"text": "hi", "session_id": "s_1", "resumable": True}  # the run outlives a dropped connection
    assert json.loads(request.partition(b"\r\n\r\n")[2]) == body


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


# --------------------------------------------------------------------------- typed events


def _sse(event: str, data: dict[str, Any], event_id: int) -> bytes:
    return f"id: {event_id}\nevent: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def test_stream_events_yields_events_and_stops_at_the_terminal_one() -> None:
    body = (
        _sse("run_started", {"type": "run_started", "run_id": "run_1"}, 0)
        + b": keep-alive\n\n"
        + _sse("answer_delta", {"type": "answer_delta", "text": "東"}, 1)
        + _sse("run_finished", {"type": "run_finished", "answer": "東", "finish_reason": "length"}, 2)
    )
    steps: list[Step] = [SSE_HEAD + b"\r\n", chunk(body[:37]), 0.05, chunk(body[37:]), END]
    with RawServer(steps) as server:
        stream = stream_events(server.url, "q", mode="full")
        events = list(stream)
    assert events[:2] == [RunStarted(run_id="run_1"), AnswerDelta(text="東")]
    assert isinstance(events[2], RunFinished)
    assert (events[2].answer, events[2].finish_reason) == ("東", "length")
    assert (stream.last_event_id, stream.text, stream.reconnects) == ("2", "東", 0)
    request = server.requests[0]
    assert request.startswith(b"POST /chat/events HTTP/1.1")
    body_sent = json.loads(request.partition(b"\r\n\r\n")[2])
    assert body_sent == {"text": "q", "mode": "full", "resumable": True}


def test_events_of_an_unknown_type_are_skipped_and_bad_data_is_an_error() -> None:
    body = (
        _sse("from_the_future", {"x": 1}, 0)
        + _sse("answer_delta", {"text": "a"}, 1)
        + _sse("error", {"message": "boom", "code": "backend", "answer": "a"}, 2)
    )
    with RawServer([SSE_HEAD + b"\r\n", chunk(body), END]) as server:
        events = list(stream_events(server.url, "q"))
    assert events == [AnswerDelta(text="a"), RunError(message="boom", code="backend", answer="a")]
    for bad, says in (
        (b"event: answer_delta\ndata: {oops\n\n", "not JSON"),
        (b"data: [1]\n\n", "JSON object"),
    ):
        with (
            RawServer([SSE_HEAD + b"\r\n", chunk(bad), END]) as server,
            pytest.raises(TokenrelayClientError, match=says),
        ):
            list(stream_events(server.url, "q"))


def test_stream_events_without_a_terminal_event_and_no_way_to_resume_is_incomplete() -> None:
    body = _sse("run_started", {"run_id": "r"}, 0) + _sse("answer_delta", {"text": "部分"}, 1)
    # no X-Run-Id (another server), or resuming turned off: a clean end and a cut end alike
    for steps, reconnect in (
        ([SSE_HEAD + b"\r\n", chunk(body), END], RECONNECT_NOW),
        ([SSE_HEAD + b"\r\n", chunk(body)], RECONNECT_NOW),
        ([SSE_HEAD + b"x-run-id: run_1\r\n\r\n", chunk(body)], None),
    ):
        with RawServer(steps) as server, pytest.raises(IncompleteStreamError) as info:
            list(stream_events(server.url, "q", reconnect=reconnect))
        assert info.value.partial_text == "部分"
        assert len(server.requests) == 1  # no resume, and nothing to cancel
    assert b'"resumable"' not in server.requests[0]


@pytest.mark.anyio
async def test_async_stream_events() -> None:
    body = _sse("answer_delta", {"text": "a"}, 0) + _sse("error", {"message": "boom", "code": "backend"}, 1)
    steps: list[Step] = [SSE_HEAD + b"\r\n", chunk(body), END]
    with RawServer(steps) as server:
        events = [e async for e in astream_events(server.url, "q")]
    assert events == [AnswerDelta(text="a"), RunError(message="boom", code="backend")]


# --------------------------------------------------------------------------- resuming, whole transcripts

RECONNECT_NOW = Reconnect(delay=0, attempts=3)
RUN_HEAD = SSE_HEAD + b"x-session-id: s_1\r\nx-run-id: run_1\r\n\r\n"
ANSWER_EVENTS = [
    ("run_started", {"type": "run_started", "run_id": "run_1", "session_id": "s_1"}),
    ("answer_delta", {"type": "answer_delta", "text": '東京は "日本" {の}'}),
    ("narration", {"type": "narration", "text": "東京は"}),
    ("answer_delta", {"type": "answer_delta", "text": "首都\\です 🗼"}),
    ("run_finished", {"type": "run_finished", "answer": "首都\\です 🗼"}),
]
FRAMES = [_sse(name, data, i) for i, (name, data) in enumerate(ANSWER_EVENTS)]
EXPECTED = [event_from_dict(data) for _, data in ANSWER_EVENTS]
RAW_TEXT = '東京は "日本" {の}首都\\です 🗼'


def header(request: bytes, name: bytes) -> bytes | None:
    for line in request.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None


@pytest.mark.parametrize("cut", ["chunk cut", "clean end", "stall"])
def test_a_dropped_event_stream_resumes_after_the_last_event_id(cut: str) -> None:
    """Cut after two events: the client resumes the run and yields the rest, each event once."""
    first: list[Step] = [RUN_HEAD, chunk(FRAMES[0] + FRAMES[1] + FRAMES[2][:9])]
    if cut == "clean end":
        first.append(END)
    elif cut == "stall":
        first.append(1.0)
    rest: list[Step] = [SSE_HEAD + b"\r\n", chunk(b"".join(FRAMES[2:])), END]
    with RawServer(first, rest) as server:
        stream = stream_events(server.url, "q", api_key="k", timeout=0.3, reconnect=RECONNECT_NOW)
        events = list(stream)
    assert events == EXPECTED
    assert (stream.reconnects, stream.last_event_id, stream.run_id) == (1, "4", "run_1")
    resume = server.requests[1]
    assert resume.startswith(b"GET /runs/run_1/events HTTP/1.1")
    assert header(resume, b"last-event-id") == b"1"
    assert header(resume, b"authorization") == b"Bearer k"
    assert len(server.requests) == 2  # the run ended: nothing to cancel


def test_a_dropped_text_stream_resumes_and_skips_the_characters_already_yielded() -> None:
    """`/chat` has no event ids: the resumption reads the run's events from the start and skips
    what was yielded, even when the cut fell inside a character and after a narration."""
    raw = RAW_TEXT.encode()
    cut = len('東京は "日本" {の}首'.encode()) + 1  # inside 都
    first: list[Step] = [TEXT_HEAD + b"x-run-id: run_1\r\n\r\n", chunk(raw[:5]), 0.05, chunk(raw[5:cut])]
    second: list[Step] = [
        SSE_HEAD + b"\r\n",
        chunk(b"".join(FRAMES[:3])),
        0.05,
        chunk(FRAMES[3][:20]),
    ]  # cut again
    third: list[Step] = [SSE_HEAD + b"\r\n", chunk(FRAMES[3] + FRAMES[4]), END]
    with RawServer(first, second, third) as server:
        stream = stream_text(server.url, "q", reconnect=RECONNECT_NOW)
        pieces = list(stream)
    assert "".join(pieces) == RAW_TEXT == stream.text
    assert "\ufffd" not in "".join(pieces) and stream.reconnects == 2
    assert header(server.requests[1], b"last-event-id") is None  # from the start
    assert header(server.requests[2], b"last-event-id") == b"2"  # then by id, as usual


def test_a_text_run_that_fails_raises_incomplete_with_its_text_and_reason() -> None:
    first: list[Step] = [TEXT_HEAD + b"x-run-id: run_1\r\n\r\n", chunk("部分".encode())]
    failed = _sse("error", {"type": "error", "message": "the model\nbroke", "code": "backend"}, 2)
    rest: list[Step] = [SSE_HEAD + b"\r\n", chunk(_sse("answer_delta", {"text": "部分的"}, 1) + failed), END]
    with RawServer(first, rest) as server, pytest.raises(IncompleteStreamError) as info:
        list(stream_text(server.url, "q", reconnect=RECONNECT_NOW))
    assert info.value.partial_text == "部分的"
    assert str(info.value) == "the stream ended before the answer was complete (backend: the model broke)"
    assert len(server.requests) == 2  # the run is over: nothing to cancel


def test_a_run_the_server_no_longer_knows_cannot_be_resumed() -> None:
    first: list[Step] = [RUN_HEAD, chunk(FRAMES[0] + FRAMES[1])]
    with RawServer(first) as server, pytest.raises(IncompleteStreamError) as info:
        list(stream_events(server.url, "q", reconnect=RECONNECT_NOW))
    assert info.value.partial_text == '東京は "日本" {の}'
    assert str(info.value) == (
        "the stream ended before the answer was complete; it cannot be resumed: HTTP 404: no run 'run_1'"
    )
    assert len(server.requests) == 2


def test_resuming_gives_up_after_the_attempts_in_a_row() -> None:
    refuse: list[Step] = [
        b"HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-length: 4\r\n\r\nbusy"
    ]
    first: list[Step] = [RUN_HEAD, chunk(FRAMES[0] + FRAMES[1])]
    with (
        RawServer(first, refuse, refuse, refuse, [ACCEPTED]) as server,
        pytest.raises(IncompleteStreamError) as info,
    ):
        list(stream_events(server.url, "q", reconnect=RECONNECT_NOW))
    assert str(info.value) == (
        "the stream ended before the answer was complete;"
        " 3 tries to resume it failed, the last: HTTP 503: busy"
    )
    assert server.requests[4].startswith(b"POST /runs/run_1/cancel ")  # nobody will read the rest


@pytest.mark.parametrize("how", ["close", "with-break"])
def test_leaving_a_stream_early_cancels_its_run(how: str) -> None:
    accepted: list[Step] = [ACCEPTED]
    with RawServer([RUN_HEAD, chunk(FRAMES[0] + FRAMES[1]), 0.5], accepted) as server:
        stream = stream_events(server.url, "q", api_key="k")
        if how == "close":
            assert next(stream) == EXPECTED[0]
            stream.close()
        else:
            with stream:
                for _ in stream:
                    break
        assert wait_until(lambda: len(server.requests) == 2)
    cancel = server.requests[1]
    assert cancel.startswith(b"POST /runs/run_1/cancel HTTP/1.1")
    assert header(cancel, b"authorization") == b"Bearer k"


@pytest.mark.anyio
async def test_async_streams_resume_and_cancel_the_same_way() -> None:
    first: list[Step] = [RUN_HEAD, chunk(FRAMES[0] + FRAMES[1])]
    rest: list[Step] = [SSE_HEAD + b"\r\n", chunk(b"".join(FRAMES[2:])), END]
    with RawServer(first, rest) as server:
        stream = astream_events(server.url, "q", reconnect=RECONNECT_NOW)
        assert [e async for e in stream] == EXPECTED
    assert stream.reconnects == 1 and header(server.requests[1], b"last-event-id") == b"1"

    accepted: list[Step] = [ACCEPTED]
    with RawServer([TEXT_HEAD + b"x-run-id: run_1\r\n\r\n", chunk(b"ab"), 0.5], accepted) as server:
        async with astream_text(server.url, "q") as text_stream:
            async for piece in text_stream:
                assert piece == "ab"
                break
        assert server.requests[1].startswith(b"POST /runs/run_1/cancel ")


# --------------------------------------------------------------------------- the core, without I/O


def test_a_reconnect_policy_that_could_never_resume_is_refused() -> None:
    for bad in ({"attempts": 0}, {"delay": -1.0}, {"max_delay": -1.0}):
        with pytest.raises(ValueError, match="reconnect=None"):
            Reconnect(**bad)


def drive(core: StreamCore, replies: list[object]) -> list[object]:
    """Run a core's plan: answer each `Open`/`Read` with the next reply (an exception is thrown
    in); return every operation, so a test can read the waits without waiting."""
    plan = core.plan()
    ops: list[object] = []
    reply: object = None
    try:
        while True:
            op = plan.throw(reply) if isinstance(reply, Exception) else plan.send(reply)
            ops.append(op)
            reply = replies.pop(0) if isinstance(op, Open | Read) else None
    except StopIteration:
        return ops


def test_waits_double_up_to_the_limit_and_a_servers_retry_replaces_the_first() -> None:
    core = events_core(
        "http://h", "q", session_id=None, api_key=None, mode="final", timeout=1,
        reconnect=Reconnect(attempts=5, delay=0.5, max_delay=3),
    )  # fmt: skip
    refused = httpx.ConnectError("refused")
    started = httpx.Response(200, headers={"x-run-id": "r"})
    with pytest.raises(IncompleteStreamError, match="5 tries to resume it failed, the last: cannot reach"):
        drive(core, [started, b"retry: 2000\n\nid: 0\ndata: {}\n\n", b""] + [refused] * 5)

    waits = []
    core = events_core(
        "http://h", "q", session_id=None, api_key=None, mode="final", timeout=1, reconnect=Reconnect()
    )
    body = b'id: 0\nevent: answer_delta\ndata: {"text": "a"}\n\n'
    ops = drive(
        core,
        [
            started,
            body,
            b"",
            refused,
            refused,
            started,
            body,
            httpx.ReadError("reset"),
            refused,
            started,
            b'event: run_finished\ndata: {"answer": "a"}\n\n',
        ],
    )
    waits = [op.seconds for op in ops if isinstance(op, Sleep)]
    assert waits == [0.5, 1.0, 2.0, 0.5, 1.0]  # a try that brought events starts the count again
    assert core.reconnects == 2


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
        cwd=Path(__file__).resolve().parents[1],
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
    # the client resumed the run to learn why it ended, and says so
    assert done.stderr == (
        "tokenrelay: error: the stream ended before the answer was complete"
        " (backend: scripted backend failure)\n"
    )


def test_cli_stream_unreachable_server_is_one_line() -> None:
    done = run_cli("hi", "--url", f"http://127.0.0.1:{free_port()}")
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("tokenrelay: error: cannot reach the server at http://127.0.0.1:")
    assert done.stderr.count("\n") == 1
