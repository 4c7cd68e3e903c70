"""Fault injection against a real server over a real socket: each fault of the hardening issue
is injected and the required behaviour asserted (docs/reliability.md has the table).

Deeper than tests/e2e/test_server_live.py and tests/server/test_server_transcript.py (which cover a
ScriptedBackend client disconnect and a ScriptedBackend mid-stream failure): here the backend is
the real embedded llama.cpp model (its worker thread must stop) or `OpenAIBackend` talking to
tests/fake_openai.py over HTTP (the upstream request must be closed; resets, 500s, malformed
chunks and stalls must surface on every endpoint); tools hang and raise; a reader takes one byte
a second; the server is SIGKILLed mid-run and restarted on the same SQLite file; 200 sessions
stream at once.

Timing bounds are the issue's (cancel within 1 s); everything else waits generously, so a busy
2-core CI machine does not make them flaky.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import anyio
import httpx
import openai
import pytest

from fake_openai import DONE, Drop, FakeOpenAIServer, Reply, Sleep, error_reply, sse, text_events
from replies import action, echo, final, last_user, paced_reply
from server_fixture import LiveServer, free_port, make_app, rss_bytes, wait_until
from tokenrelay.agent.loop import Agent
from tokenrelay.backends.base import Backend, FinishChunk, GenerationSettings, ModelChunk, TextChunk
from tokenrelay.backends.openai_compat import OpenAIBackend
from tokenrelay.client import IncompleteStreamError, stream_events, stream_text
from tokenrelay.events import RunError, RunFinished, ToolCallFinished
from tokenrelay.memory.sqlite import RECOVERED_ERROR
from tokenrelay.messages import Message, ToolSpec
from tokenrelay.runs import RunChannel, RunRegistry
from tokenrelay.testing import ScriptedBackend
from tokenrelay.tools.registry import Tool

PREFIX = '{"action": "Final Answer", "action_input": "'
ENDPOINTS: dict[str, dict[str, Any]] = {
    "/chat": {"text": "tell me a long story"},
    "/chat/events": {"text": "tell me a long story"},
    "/v1/chat/completions": {
        "messages": [{"role": "user", "content": "tell me a long story"}],
        "stream": True,
    },
}


def nodelay(server: LiveServer) -> LiveServer:
    """TCP_NODELAY on the listening socket (Linux passes it on to accepted sockets). LiveServer
    binds a socket with proto 0, so asyncio does not set TCP_NODELAY on its connections, and
    every response written in two parts waits ~40 ms for the client's delayed ACK (Nagle)."""
    server._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return server


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    """`serve(backend, **settings)`: a live server on a SQLite file in tmp_path. Backends with
    an HTTP client are closed on the server's loop before it stops."""
    servers: list[tuple[LiveServer, Any]] = []

    def start(backend: Any, db: Path | None = None, sndbuf: int | None = None, **settings: Any) -> LiveServer:
        server = nodelay(LiveServer(make_app(db or tmp_path / "faults.db", backend, **settings)))
        if sndbuf is not None:  # inherited by accepted sockets
            server._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        servers.append((server.start(), backend))
        return server

    yield start
    for server, backend in servers:
        if isinstance(backend, OpenAIBackend) and server.loop is not None and server._thread.is_alive():
            server.run_in_loop(backend.aclose())
        server.stop()


@pytest.fixture(scope="module")
def fake_server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as server:
        assert server._server is not None
        for listener in server._server.servers:  # see `nodelay`
            for sock in listener.sockets:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        yield server


@pytest.fixture
def fake(fake_server: FakeOpenAIServer) -> Iterator[FakeOpenAIServer]:
    fake_server.reset()
    yield fake_server
    fake_server.reset()


def read_until(response: httpx.Response, needle: bytes, limit_s: float = 20.0) -> bytes:
    seen = b""
    deadline = time.monotonic() + limit_s
    for chunk in response.iter_raw():
        seen += chunk
        if needle in seen:
            return seen
        assert time.monotonic() < deadline, f"{needle!r} did not arrive: {seen[-200:]!r}"
    raise AssertionError(f"{needle!r} never arrived: {seen[-200:]!r}")


def received_answer(path: str, raw: bytes) -> str:
    """The answer text in what a client received so far from `path` (complete frames only)."""
    if path == "/chat":
        return raw.decode("utf-8", "ignore")
    text = ""
    for block in raw.decode("utf-8", "ignore").split("\n\n")[:-1]:
        for line in block.split("\n"):
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            data = json.loads(line[6:])
            if path == "/chat/events" and data.get("type") == "answer_delta":
                text += data["text"]
            elif path == "/v1/chat/completions" and data.get("choices"):
                text += data["choices"][0]["delta"].get("content") or ""
    return text


def session_turns(http: httpx.Client, server: LiveServer, session_id: str) -> list[dict[str, Any]]:
    response = http.get(server.url + f"/sessions/{session_id}")
    assert response.status_code == 200, response.text
    return list(response.json()["turns"])


def registry(server: LiveServer) -> RunRegistry:
    reg: RunRegistry = server.app.state.registry
    return reg


def only_channel(server: LiveServer) -> RunChannel:
    channels = list(registry(server)._runs.values())
    assert len(channels) == 1, channels
    return channels[0]


def sdk(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=30.0)


# =========================================================================== client disconnects


@pytest.mark.model
@pytest.mark.parametrize("path", list(ENDPOINTS))
def test_disconnect_stops_the_llamacpp_worker_within_1s(serve: Callable[..., LiveServer], path: str) -> None:
    """The real embedded model behind the real server: after the first answer tokens the client
    leaves; the llama.cpp worker thread is idle within 1 s and generates nothing more, and the
    turn is stored as interrupted with the partial answer."""
    from tokenrelay.backends.llamacpp import LlamaCppBackend

    backend = LlamaCppBackend()
    server = serve(backend, max_tokens=2000, temperature=0.0)
    runner = server.app.state.runner
    # no tools: the whole JSON action is the final answer, so answer text streams at once
    runner.agent = Agent(backend, tools=[], store=runner.store, generation=runner.generation)
    body = dict(ENDPOINTS[path])
    prompt = "Write a very long story about a dragon who learns to fly. Use many chapters."
    if path == "/v1/chat/completions":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["text"] = prompt
    with httpx.Client(timeout=60) as http:
        with http.stream("POST", server.url + path, json=body) as response:
            assert response.status_code == 200
            session_id = response.headers.get("x-session-id")
            raw = b""
            deadline = time.monotonic() + 60
            for chunk in response.iter_raw():
                raw += chunk
                if len(received_answer(path, raw).split()) >= 3:
                    break
                assert time.monotonic() < deadline, raw[-300:]
            assert backend.busy, "the model finished before the client left: the test proves nothing"
            closed_at = time.monotonic()
        assert wait_until(lambda: not backend.busy, timeout=1.0, interval=0.005), (
            "the llama.cpp worker still generates 1 s after the client left"
        )
        stopped_in = time.monotonic() - closed_at
        assert stopped_in < 1.0, stopped_in
        count = backend.tokens_generated
        time.sleep(0.3)
        assert backend.tokens_generated == count, "tokens were generated after the stop"
        assert not backend.busy

        if session_id is None:  # the OpenAI endpoint is stateless
            return
        assert wait_until(lambda: session_turns(http, server, session_id)[0]["status"] != "running", 5.0)
        (turn,) = session_turns(http, server, session_id)
        assert turn["status"] == "interrupted"
        assert turn["answer"].startswith(received_answer(path, raw))


@pytest.mark.parametrize("path", list(ENDPOINTS))
def test_disconnect_closes_the_upstream_http_request_within_1s(
    serve: Callable[..., LiveServer], fake: FakeOpenAIServer, path: str
) -> None:
    """OpenAIBackend behind the server: when the client leaves, the request to the upstream
    model server is closed (the fake upstream sees the disconnect) within 1 s."""
    words = [f"w{i} " for i in range(400)]
    fake.handler = lambda record: Reply(parts=[*text_events(paced_reply(words)), DONE], delay=0.03)
    backend = OpenAIBackend("fake-model", base_url=fake.base_url, api_key="sk-test")
    server = serve(backend, tool_protocol="json")
    with httpx.Client(timeout=30) as http:
        with http.stream("POST", server.url + path, json=ENDPOINTS[path]) as response:
            assert response.status_code == 200
            session_id = response.headers.get("x-session-id")
            raw = read_until(response, b"w3 ")
            closed_at = time.monotonic()
        upstream = fake.chat_requests[-1]
        assert upstream.disconnected.wait(1.0), (
            "the upstream request was still open 1 s after the client left"
        )
        assert upstream.disconnected_at is not None and upstream.disconnected_at - closed_at < 1.0
        assert not upstream.completed.is_set()
        sent = upstream.parts_sent
        time.sleep(0.2)
        assert upstream.parts_sent == sent and fake.active == 0
        if session_id is None:
            return
        assert wait_until(lambda: session_turns(http, server, session_id)[0]["status"] != "running", 5.0)
        (turn,) = session_turns(http, server, session_id)
        assert turn["status"] == "interrupted"
        full = "".join(words)
        assert turn["answer"].startswith(received_answer(path, raw)) and full.startswith(turn["answer"])
        assert turn["answer"] != full


def _raw_request(port: int, path: str, body: dict[str, Any]) -> socket.socket:
    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n".encode()
        + data
    )
    return sock


@pytest.mark.parametrize("path", list(ENDPOINTS))
def test_a_connection_reset_mid_stream_cancels_the_run_within_1s(
    serve: Callable[..., LiveServer], path: str
) -> None:
    """Not a polite close: the client's TCP stack sends RST (SO_LINGER 0) mid-stream."""
    backend = ScriptedBackend([paced_reply([f"w{i} " for i in range(400)])], tokens_per_second=40)
    server = serve(backend)
    sock = _raw_request(server.port, path, ENDPOINTS[path])
    seen = b""
    while b"w2 " not in seen:
        chunk = sock.recv(65536)
        assert chunk, seen
        seen += chunk
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    reset_at = time.monotonic()
    assert wait_until(lambda: backend.calls[-1].abandoned, timeout=1.0, interval=0.005)
    assert time.monotonic() - reset_at < 1.0
    channel = only_channel(server)
    assert wait_until(lambda: channel.done, 1.0)
    assert channel.events[-1].type == "error" and channel.events[-1].code == "cancelled"  # type: ignore[union-attr]


# =========================================================================== upstream failures


def _head(words: Sequence[str]) -> list[bytes]:
    return text_events(paced_reply(words)[:-1])  # the opening, the JSON head and the words


WORDS = ["Once ", "upon ", "a ", "time "]

#: name -> (the upstream's reply, what the error message must say, backend options)
UPSTREAM_FAULTS: dict[str, tuple[Callable[[], Reply], str, dict[str, float]]] = {
    "connection-reset": (lambda: Reply(parts=[*_head(WORDS), Drop()], delay=0.01), "broke", {}),
    "http-500": (lambda: error_reply(500, "the GPU caught fire", type="server_error"), "HTTP 500", {}),
    "error-event-mid-stream": (
        lambda: Reply(parts=[*_head(WORDS), sse({"error": {"message": "model overloaded", "code": 503}})]),
        "model overloaded",
        {},
    ),
    "malformed-chunk": (
        lambda: Reply(parts=[*_head(WORDS), b'data: {"choices": [{"delta": {"content": \n\n']),
        "malformed stream chunk",
        {},
    ),
    "ends-without-done": (lambda: Reply(parts=_head(WORDS)), "ended unexpectedly", {}),
    "stall-after-tokens": (
        lambda: Reply(parts=[*_head(WORDS), Sleep(30)]),
        "no data from server for 0.5 s",
        {"idle_timeout_s": 0.5},
    ),
    "no-first-token": (
        lambda: Reply(parts=[Sleep(30)]),
        "no first token from server within 0.5 s",
        {"first_token_timeout_s": 0.5},
    ),
}


@pytest.mark.parametrize("fault", list(UPSTREAM_FAULTS))
def test_an_upstream_failure_mid_stream_is_reported_on_every_endpoint(
    serve: Callable[..., LiveServer], fake: FakeOpenAIServer, fault: str
) -> None:
    make_reply, says, options = UPSTREAM_FAULTS[fault]
    fake.handler = lambda record: make_reply()
    backend = OpenAIBackend("fake-model", base_url=fake.base_url, api_key="sk-test", timeout_s=10, **options)
    server = serve(backend, tool_protocol="json")
    partial_expected = "" if fault in ("http-500", "no-first-token") else "".join(WORDS)
    started = time.monotonic()

    # typed SSE: ends with an error event that says what failed, never run_finished
    events = list(stream_events(server.url, "q", timeout=15))
    last = events[-1]
    assert isinstance(last, RunError) and last.code == "backend", last
    assert says in last.message, last.message
    assert "sk-test" not in last.message
    assert last.answer == partial_expected
    assert not any(isinstance(e, RunFinished) for e in events)

    # OpenAI endpoint, streamed: the SDK raises (an error chunk and no [DONE])
    with sdk(server) as client:
        stream = client.chat.completions.create(
            model="x", messages=[{"role": "user", "content": "q"}], stream=True
        )
        got = ""
        with pytest.raises(openai.APIError, match=says):
            for chunk in stream:
                got += chunk.choices[0].delta.content or ""
        assert got == partial_expected
        # not streamed: an error status, not a 200 with a short answer
        with pytest.raises(openai.APIStatusError, match=says) as info:
            client.chat.completions.create(model="x", messages=[{"role": "user", "content": "q"}])
        assert info.value.status_code == 502

    # raw text: the bundled client reports the stream as incomplete, with the partial text
    with pytest.raises(IncompleteStreamError) as incomplete:
        for _ in stream_text(server.url, "q", timeout=15):
            pass
    assert incomplete.value.partial_text == partial_expected

    assert time.monotonic() - started < 20  # never a hang
    # every failed turn is stored as failed, saying why, with what was said
    with httpx.Client(timeout=10) as http:
        turns = [
            t for s in http.get(server.url + "/sessions").json() for t in session_turns(http, server, s["id"])
        ]
    assert len(turns) == 2
    assert all(
        t["status"] == "failed" and says in t["error"] and t["answer"] == partial_expected for t in turns
    )
    assert fake.active == 0  # no upstream request left open


# =========================================================================== tools


def _use_tools(server: LiveServer, tools: list[Tool], **options: Any) -> None:
    """Swap the server's agent for one with these tools (Settings has no tool list)."""
    runner = server.app.state.runner
    runner.agent = Agent(
        runner.backend, tools=tools, store=runner.store, generation=runner.generation, **options
    )


RELEASE = threading.Event()


async def hang_async(query: str) -> str:
    """Never answers (until the test ends)."""
    await asyncio.sleep(3600)
    return "unreachable"


def hang_sync(query: str) -> str:
    """Blocks its worker thread (released at the end of the test, so the thread pool drains)."""
    RELEASE.wait(30)
    return "too late"


def explode(query: str) -> str:
    """Raises."""
    raise RuntimeError("the tool broke: " + query)


def exit_process(query: str) -> str:
    """A badly written tool that calls sys.exit()."""
    raise SystemExit(3)


def huge_result(query: str) -> str:
    """Returns 20 MB."""
    return "x" * 20_000_000


def tool_script(tool_name: str) -> Callable[[Sequence[Message]], str]:
    """The model calls `tool_name` once, then answers with the observation it got."""

    def reply(messages: Sequence[Message]) -> str:
        observation = last_user(messages)
        if observation.startswith("TOOL RESPONSE"):
            return final("after the tool: " + observation[:120])
        return action(tool_name, "do it")

    return reply


TOOL_FAULTS = {
    "hang-async": (hang_async, "timed out after 0.3 s"),
    "hang-sync": (hang_sync, "timed out after 0.3 s"),
    "raises": (explode, "RuntimeError: the tool broke: do it"),
    "huge-result": (huge_result, None),
}


@pytest.fixture
def release_tools(serve: Callable[..., LiveServer]) -> Iterator[None]:
    """Hung sync tools are released before the servers stop (torn down before `serve`)."""
    RELEASE.clear()
    yield
    RELEASE.set()


@pytest.mark.usefixtures("release_tools")
@pytest.mark.parametrize("fault", list(TOOL_FAULTS))
def test_a_hanging_or_failing_tool_becomes_an_observation_and_the_run_goes_on(
    serve: Callable[..., LiveServer], fault: str
) -> None:
    function, error = TOOL_FAULTS[fault]
    tool = Tool.from_function(function, name="Probe")
    backend = ScriptedBackend(tool_script("Probe"))
    server = serve(backend, tool_timeout_s=0.3)
    _use_tools(server, [tool], tool_timeout_s=0.3)
    started = time.monotonic()
    events = list(stream_events(server.url, "use the probe", timeout=10))
    assert time.monotonic() - started < 5
    last = events[-1]
    assert isinstance(last, RunFinished), last
    (finished,) = [e for e in events if isinstance(e, ToolCallFinished)]
    if error is None:
        assert finished.error is None and finished.result is not None
        assert len(finished.result) < 10_000 and "truncated" in finished.result  # truncated observation
    else:
        assert finished.result is None and finished.error is not None and error in finished.error
        assert last.answer.startswith("after the tool: TOOL RESPONSE")
        assert error in last.answer
    # the model saw the observation in its second call
    assert len(backend.calls) == 2


@pytest.mark.usefixtures("release_tools")
def test_a_tool_that_always_hangs_still_ends_the_run_cleanly(serve: Callable[..., LiveServer]) -> None:
    """The model insists on the hanging tool: max_iterations, then the final-only call."""
    tool = Tool.from_function(hang_async, name="Probe")

    def reply(messages: Sequence[Message]) -> str:
        if any("final answer" in m.content.lower() for m in messages[-1:] if m.role == "user") and (
            "TOOL RESPONSE" not in messages[-1].content
        ):
            return final("I could not use the tool.")
        return action("Probe", "again")

    backend = ScriptedBackend(reply)
    server = serve(backend, max_iterations=3)
    _use_tools(server, [tool], tool_timeout_s=0.2, max_iterations=3)
    started = time.monotonic()
    events = list(stream_events(server.url, "use the probe", timeout=10))
    assert time.monotonic() - started < 5
    finished = [e for e in events if isinstance(e, ToolCallFinished)]
    assert len(finished) == 3 and all("timed out" in (e.error or "") for e in finished)
    assert isinstance(events[-1], RunFinished) and events[-1].answer


def test_a_tool_that_calls_sys_exit_does_not_stop_the_server(serve: Callable[..., LiveServer]) -> None:
    tool = Tool.from_function(exit_process, name="Probe")
    backend = ScriptedBackend(tool_script("Probe"))
    server = serve(backend)
    _use_tools(server, [tool], tool_timeout_s=2)
    try:
        events = list(stream_events(server.url, "use the probe", timeout=5))
        assert isinstance(events[-1], RunFinished)
        (finished,) = [e for e in events if isinstance(e, ToolCallFinished)]
        assert "SystemExit" in (finished.error or "")
        assert httpx.get(server.url + "/health", timeout=5).status_code == 200
    finally:
        server._thread.join(2)
        if not server._thread.is_alive():  # the server died: do not fail the teardown too
            server._error = None


def test_a_hung_sync_tool_does_not_block_server_shutdown(
    serve: Callable[..., LiveServer], release_tools: None
) -> None:
    tool = Tool.from_function(hang_sync, name="Probe")
    server = serve(ScriptedBackend(tool_script("Probe")))
    _use_tools(server, [tool], tool_timeout_s=0.2)
    events = list(stream_events(server.url, "use the probe", timeout=10))
    assert isinstance(events[-1], RunFinished)  # the run itself went on
    server.server.should_exit = True
    server._thread.join(server.graceful_s + 3)
    stopped = not server._thread.is_alive()
    RELEASE.set()  # let the tool return, so the fixture can stop the server either way
    assert stopped, "the server was still shutting down 5 s after it was told to stop"


# =========================================================================== slow reader


def _slow_reader(port: int, path: str, body: dict[str, Any], seconds: float) -> bytes:
    """A client with a 4 KiB receive buffer that reads one byte a second for `seconds`."""
    data = json.dumps(body).encode()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n".encode()
        + data
    )
    got = b""
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            got += sock.recv(1)
            time.sleep(1.0)
    finally:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    return got


def test_a_1_byte_per_second_reader_does_not_grow_server_memory(serve: Callable[..., LiveServer]) -> None:
    """What the server does: a run's events go to a per-run buffer (bounded by the answer:
    max_tokens per model call x iterations), and the writer to the socket is flow-controlled by
    uvicorn: above the transport's high-water mark `send` waits, and whatever was queued meanwhile
    goes out as one write when it resumes. A run that its own response drives (a plain stream)
    waits with it: the backpressure reaches the model. Either way a reader that takes one byte a
    second costs at most one answer's worth of memory, and nothing grows while it crawls."""
    answer = [f"word{i:06d} " for i in range(30_000)]  # ~330 KB, generated as fast as possible
    backend = ScriptedBackend([paced_reply(answer)])
    server = serve(backend, sndbuf=16 * 1024)  # so the kernel cannot absorb the answer
    before = rss_bytes()
    result: list[bytes] = []
    readers = [
        threading.Thread(
            target=lambda p=path: result.append(_slow_reader(server.port, p, ENDPOINTS[p], 5.0)), daemon=True
        )
        for path in ENDPOINTS
    ]
    for reader in readers:
        reader.start()
    assert wait_until(lambda: len(registry(server)) == 3, 5.0)
    time.sleep(1.5)  # steady state: the buffers between the run and the reader are full
    samples = []
    for _ in range(6):
        samples.append(rss_bytes())
        with httpx.Client(timeout=5) as http:  # the server stays responsive
            assert http.get(server.url + "/health").status_code == 200
        time.sleep(0.4)
    for reader in readers:
        reader.join(10)
    assert all(len(r) <= 10 for r in result)  # they really read ~1 byte a second
    # bounded: no growth while the readers crawl, and the whole episode costs a few MB
    assert max(samples) - min(samples) < 8 * 2**20, samples
    assert max(samples) - before < 64 * 2**20, (before, samples)
    # the readers left (TCP reset): every run ends, and its turn is stored whole or interrupted
    assert wait_until(lambda: not registry(server).active(), 2.0)
    with httpx.Client(timeout=5) as http:
        sessions = http.get(server.url + "/sessions").json()
        assert len(sessions) == 2
        for s in sessions:
            (turn,) = session_turns(http, server, s["id"])
            assert turn["status"] in ("complete", "interrupted")
            assert "".join(answer).startswith(turn["answer"])


class EndlessBackend(Backend):
    """An upstream that ignores max_tokens and never stops (a misbehaving OpenAI-compatible
    server, a looping model): the final answer grows until someone stops it."""

    name = "endless"

    def __init__(self) -> None:
        self.chunks = 0
        self.closed = False

    async def stream(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[ToolSpec] | None = None,
        settings: GenerationSettings = GenerationSettings(),
    ) -> AsyncGenerator[ModelChunk, None]:
        try:
            yield TextChunk(PREFIX)
            while True:
                self.chunks += 1
                yield TextChunk("more ")
                if self.chunks % 64 == 0:
                    await asyncio.sleep(0)
            yield FinishChunk("stop")  # pragma: no cover
        finally:
            self.closed = True


def test_a_run_that_never_ends_is_stopped_at_max_buffered_events(tmp_path: Path) -> None:
    """A run whose buffer nobody drains as it fills (`stream: false`, a resumable run, a fast
    reader): only a cap bounds it."""
    from tokenrelay.config import Settings
    from tokenrelay.server.app import create_app

    backend = EndlessBackend()
    settings_cap = 5_000
    settings = Settings(db=f"sqlite:///{tmp_path / 'endless.db'}")
    settings.max_buffered_events = settings_cap  # type: ignore[attr-defined]  # the proposed setting
    server = nodelay(LiveServer(create_app(settings, backend=backend))).start()
    before = rss_bytes()
    try:
        with httpx.Client(timeout=4) as http:
            try:
                response = http.post(server.url + "/chat", json={"text": "go on", "stream": False})
            except httpx.ReadTimeout:
                grown = rss_bytes() - before
                channel = only_channel(server)
                pytest.fail(
                    f"still running after 4 s: {len(channel.events)} events buffered, RSS +{grown >> 20} MB"
                )
        assert response.status_code == 502
        assert response.json()["error"]["code"] == "too_large"
        channel = only_channel(server)
        assert len(channel.events) <= settings_cap
        assert wait_until(lambda: backend.closed, 1.0)
        with httpx.Client(timeout=5) as http:
            (session,) = http.get(server.url + "/sessions").json()
            (turn,) = session_turns(http, server, session["id"])
            assert turn["status"] == "interrupted" and turn["answer"].startswith("more more")
    finally:
        server.stop()


# =========================================================================== restart mid-run

SERVER_SCRIPT = """
import json, sys
import uvicorn
from tokenrelay.config import Settings
from tokenrelay.server.app import create_app
from tokenrelay.testing import ScriptedBackend

db, port = sys.argv[1], int(sys.argv[2])
PREFIX = '{"action": "Final Answer", "action_input": "'
LONG = [PREFIX, *[f"w{i} " for i in range(5000)], '"}']

def reply(messages):
    text = [m.content for m in messages if m.role == "user"][-1]
    if text.startswith("quick"):
        return [PREFIX, "done: ", text, '"}']
    return LONG

backend = ScriptedBackend(reply, tokens_per_second=40)
app = create_app(Settings(db="sqlite:///" + db), backend=backend)
uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
"""


class ServerProcess:
    def __init__(self, db: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVER_SCRIPT, str(db), str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

        def up() -> bool:
            assert self.proc.poll() is None, self.proc.stderr.read() if self.proc.stderr else ""
            try:
                return httpx.get(self.url + "/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        assert wait_until(up, 30.0, 0.1), "the server process did not start"

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:  # pragma: no cover
                self.kill()
        if self.proc.stderr:
            self.proc.stderr.close()


def integrity(db: Path) -> str:
    conn = sqlite3.connect(db)
    try:
        return "\n".join(str(r[0]) for r in conn.execute("PRAGMA integrity_check"))
    finally:
        conn.close()


def _stream_for(url: str, body: dict[str, Any], seconds: float, out: dict[str, Any]) -> None:
    """Stream /chat/events, recording the session id and the answer so far; after `seconds`
    set `out["ready"]` but keep the connection open (and reading) until the server goes away."""
    ready: threading.Event = out.setdefault("ready", threading.Event())
    deadline = time.monotonic() + seconds
    try:
        with httpx.Client(timeout=30) as http, http.stream("POST", url + "/chat/events", json=body) as r:
            out["session_id"] = r.headers["x-session-id"]
            raw = b""
            for chunk in r.iter_raw():
                raw += chunk
                out["answer"] = received_answer("/chat/events", raw)
                if not ready.is_set() and time.monotonic() > deadline:
                    out["answer_at_ready"] = out["answer"]
                    ready.set()
    except httpx.HTTPError:
        out["broken"] = True
    finally:
        ready.set()


def test_sigkill_mid_run_then_restart_keeps_history_and_the_file_sound(tmp_path: Path) -> None:
    db = tmp_path / "crash.db"
    server = ServerProcess(db)
    try:
        with httpx.Client(timeout=30) as http:
            first = http.post(server.url + "/chat", json={"text": "quick one"})
            assert first.text == "done: quick one"
            session_id = first.headers["x-session-id"]
        # the session's second turn, plus five other sessions, all streaming when the kill comes
        ours: dict[str, Any] = {"ready": threading.Event()}
        others: list[dict[str, Any]] = [{} for _ in range(5)]
        threads = [
            threading.Thread(
                target=_stream_for,
                args=(server.url, {"text": "long story", "session_id": session_id}, 2.3, ours),
            ),
            *[
                threading.Thread(target=_stream_for, args=(server.url, {"text": f"other {i}"}, 60, o))
                for i, o in enumerate(others)
            ],
        ]
        for t in threads:
            t.start()
        assert ours["ready"].wait(30)
        server.kill()  # mid-run, the client still connected: no cancel, no finish_turn
        for t in threads:
            t.join(30)
    finally:
        server.stop()

    assert ours["broken"] and ours["answer_at_ready"].count(" ") > 40  # ~2.3 s at 40 tokens/s
    assert integrity(db) == "ok"
    conn = sqlite3.connect(db)
    rows = conn.execute(
        "SELECT user_text, answer, status FROM turns WHERE session_id = ? ORDER BY id", (session_id,)
    ).fetchall()
    conn.close()
    assert rows[0] == ("quick one", "done: quick one", "complete")
    assert rows[1][0] == "long story" and rows[1][2] == "running"  # as the crash left it
    checkpoint = rows[1][1]
    # checkpointed about every second: at most ~1 s (40 tokens) behind what the client saw
    assert checkpoint and ours["answer"].startswith(checkpoint)
    behind = len(ours["answer"].split()) - len(checkpoint.split())
    assert behind <= 60, (len(ours["answer"].split()), len(checkpoint.split()))

    restarted = ServerProcess(db)
    try:
        with httpx.Client(timeout=30) as http:
            detail = http.get(restarted.url + f"/sessions/{session_id}").json()
            turns = [(t["user_text"], t["answer"], t["status"], t["error"]) for t in detail["turns"]]
            assert turns == [
                ("quick one", "done: quick one", "complete", None),
                ("long story", checkpoint, "interrupted", RECOVERED_ERROR),
            ]
            assert detail["active_run_id"] is None
            for other in others:
                (turn,) = http.get(restarted.url + f"/sessions/{other['session_id']}").json()["turns"]
                assert turn["status"] == "interrupted"
                assert other.get("answer", "").startswith(turn["answer"])
            # and the conversation goes on
            again = http.post(restarted.url + "/chat", json={"text": "quick again", "session_id": session_id})
            assert again.text == "done: quick again"
            statuses = [
                t["status"] for t in http.get(restarted.url + f"/sessions/{session_id}").json()["turns"]
            ]
            assert statuses == ["complete", "interrupted", "complete"]
    finally:
        restarted.stop()
    assert integrity(db) == "ok"


def test_repeated_sigkills_during_writes_never_corrupt_the_file(tmp_path: Path) -> None:
    """Two crashes while 8 runs write turns and checkpoints: the file stays sound and every
    turn that completed before a crash is still complete afterwards."""
    db = tmp_path / "kills.db"
    completed: list[tuple[str, str]] = []
    for cycle in range(2):
        server = ServerProcess(db)
        try:
            with httpx.Client(timeout=30) as http:
                for i in range(3):
                    r = http.post(server.url + "/chat", json={"text": f"quick {cycle}.{i}"})
                    completed.append((r.headers["x-session-id"], f"quick {cycle}.{i}"))
            outs: list[dict[str, Any]] = [{"ready": threading.Event()} for _ in range(8)]
            threads = [
                threading.Thread(
                    target=_stream_for, args=(server.url, {"text": f"long {i}"}, 1.1 + 0.3 * cycle, o)
                )
                for i, o in enumerate(outs)
            ]
            for t in threads:
                t.start()
            for o in outs:
                assert o["ready"].wait(30)
            server.kill()
            for t in threads:
                t.join(30)
        finally:
            server.stop()
        assert integrity(db) == "ok", f"corrupt after crash {cycle}"
    conn = sqlite3.connect(db)
    for session_id, text in completed:
        row = conn.execute("SELECT user_text, answer, status FROM turns WHERE session_id = ?", (session_id,))
        assert row.fetchall() == [(text, "done: " + text, "complete")]
    conn.close()


# =========================================================================== many sessions


@pytest.mark.anyio
async def test_200_simultaneous_runs_on_all_endpoints_get_exactly_their_own_answer(
    serve: Callable[..., LiveServer],
) -> None:
    """200 runs at once (raw text, typed SSE, OpenAI stream, round robin), distinct prompts,
    then a second turn in each stateful session: every answer is its own, every history holds
    exactly its own two turns, and the model never saw another session's words."""
    backend = ScriptedBackend(echo, tokens_per_second=5, token_size=12)  # ~2 s per run: they overlap
    server = serve(backend)
    paths = list(ENDPOINTS)
    prompts = [f"p{i:03d} {uuid.uuid4().hex} {'日本語' * (i % 3)}" for i in range(200)]
    answers: dict[str, tuple[str, str | None]] = {}
    errors: list[str] = []
    peak = 0
    limits = httpx.Limits(max_connections=400, max_keepalive_connections=400)

    async def ask(http: httpx.AsyncClient, i: int, prompt: str, session_id: str | None = None) -> None:
        path = paths[i % 3]
        body: dict[str, Any] = (
            {"messages": [{"role": "user", "content": prompt}], "stream": True}
            if path == "/v1/chat/completions"
            else {"text": prompt, "session_id": session_id}
        )
        try:
            async with http.stream("POST", server.url + path, json=body) as response:
                raw = b""
                async for chunk in response.aiter_raw():
                    raw += chunk
                if response.status_code != 200:
                    errors.append(f"{path} {response.status_code} {raw[:200]!r}")
                    return
                answers[prompt] = (received_answer(path, raw), response.headers.get("x-session-id"))
                if path != "/chat" and b"error" in raw:
                    errors.append(f"{path}: {raw[-300:]!r}")
        except httpx.HTTPError as exc:
            errors.append(f"{path}: {exc!r}")

    async def watch(stop: anyio.Event) -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, len(registry(server).active()))
            await anyio.sleep(0.02)

    for turn in (1, 2):
        # fresh connections per wave: reusing 200 idle keep-alive connections at once is slow in
        # httpx's pool, and races the server's keep-alive timeout when this process is busy
        async with httpx.AsyncClient(timeout=60, limits=limits) as http:
            stop = anyio.Event()
            with anyio.fail_after(60):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(watch, stop)
                    async with anyio.create_task_group() as runs:
                        for i, prompt in enumerate(prompts):
                            text = prompt if turn == 1 else prompt + " again"
                            sid = None if turn == 1 or i % 3 == 2 else answers[prompt][1]
                            runs.start_soon(ask, http, i, text, sid)
                    stop.set()
        assert not errors, errors[:5]
        assert peak >= 180, f"only {peak} runs were in flight at once"

    async with httpx.AsyncClient(timeout=60) as http:
        assert len(answers) == 400
        for text, (answer, _) in answers.items():
            assert answer == "You said: " + text
        for i, prompt in enumerate(prompts):
            session_id = answers[prompt][1]
            if i % 3 == 2:
                assert session_id is None
                continue
            assert answers[prompt + " again"][1] == session_id
            detail = (await http.get(server.url + f"/sessions/{session_id}")).json()
            assert [(t["user_text"], t["answer"], t["status"]) for t in detail["turns"]] == [
                (prompt, "You said: " + prompt, "complete"),
                (prompt + " again", "You said: " + prompt + " again", "complete"),
            ]
        assert len({sid for _, sid in answers.values() if sid}) == sum(1 for i in range(200) if i % 3 != 2)

    by_prompt = {p.split()[0]: p for p in prompts}
    for call in backend.calls:
        users = [m.content for m in call.messages if m.role == "user"]
        owners = {u.split()[0] for u in users}
        assert len(owners) == 1, users  # one conversation's words only
        assert all(u.startswith(by_prompt[u.split()[0]]) for u in users)


# =========================================================================== several workers


def test_several_workers_answer_without_the_nagle_delay(tmp_path: Path) -> None:
    port = free_port()
    reply = 'scripted:{"action": "Final Answer", "action_input": "Hello"}'
    command = [sys.executable, "-m", "tokenrelay.cli", "serve", "--model", reply, "--workers", "2"]
    command += ["--port", str(port), "--db", str(tmp_path / "workers.db")]
    proc = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        url = f"http://127.0.0.1:{port}"

        def up() -> bool:
            try:
                return httpx.get(url + "/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        assert wait_until(up, 60.0, 0.1), "the workers did not start"
        with httpx.Client(timeout=10) as http:
            http.get(url + "/health")
            timings = []
            for _ in range(15):
                started = time.perf_counter()
                assert http.get(url + "/health").status_code == 200
                timings.append(time.perf_counter() - started)
        median = sorted(timings)[len(timings) // 2]
        assert median < 0.015, f"median GET /health {median * 1000:.1f} ms (one worker: about 1 ms)"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:  # pragma: no cover
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
