"""Issue 11, black-box: the agent's answer streams token by token on every surface, from an
OpenAI-compatible upstream that streams slowly with tools on offer.

A real fake upstream (tests/fake_openai.py, uvicorn over a socket) streams the answer in many
pieces; tokenrelay runs as a real uvicorn server (or as the `tokenrelay` command) with the real
OpenAI-compatible backend. Each surface must deliver the answer in (nearly) as many pieces as
the upstream sent, the first long before the upstream finished, byte-exact. Timing bounds here
are wide on purpose (a loaded CI machine); `bench/bench_streaming.py` measures the figures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fake_openai import FakeOpenAIServer, Reply, chunk, sse, text_reply, tool_call_reply
from server_fixture import LiveServer, make_app
from tokenrelay.backends.openai_compat import OpenAIBackend

# quotes, braces, backslashes, newlines, Japanese, emoji: everything the tutorial lost
PIECES = [
    "He said ",
    '"hi" ',
    "{braces} ",
    "}] ",
    "\\ back",
    "\nslash\t",
    "日本語の",
    "テキスト ",
    "🎉👍🏽",
    " end",
] * 4
ANSWER = "".join(PIECES)
DELAY = 0.03  # between upstream pieces: ~1.2 s for the answer


@pytest.fixture
def upstream() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as server:
        yield server


@pytest.fixture
def serve(tmp_path: Path, upstream: FakeOpenAIServer) -> Iterator[Callable[..., LiveServer]]:
    servers: list[tuple[LiveServer, OpenAIBackend]] = []

    def start(**settings: Any) -> LiveServer:
        backend = OpenAIBackend("fake-model", base_url=upstream.base_url, api_key="sk-test")
        server = LiveServer(make_app(tmp_path / "tokenrelay.db", backend, **settings)).start()
        servers.append((server, backend))
        return server

    yield start
    for server, backend in servers:
        server.run_in_loop(backend.aclose())  # its HTTP client lives on the server's loop
        server.stop()


def first_content_sent_at(upstream: FakeOpenAIServer) -> float:
    """When the upstream sent its first content piece (part 0 is the role chunk)."""
    return upstream.chat_requests[-1].sent_at[1]


def read_pieces(response: httpx.Response, extract: Callable[[bytes], str]) -> list[tuple[float, str]]:
    """(arrival time, answer text) of every network read that carried answer text."""
    out: list[tuple[float, str]] = []
    for raw in response.iter_raw():
        text = extract(raw)
        if text:
            out.append((time.monotonic(), text))
    return out


def sse_answer(raw: bytes) -> str:
    text = []
    for line in raw.decode().split("\n"):
        if line.startswith("data: {"):
            data = json.loads(line[6:])
            if data.get("type") == "answer_delta":
                text.append(data["text"])
            for choice in data.get("choices", ()):
                text.append(choice.get("delta", {}).get("content") or "")
    return "".join(text)


SURFACES: dict[str, tuple[str, dict[str, Any], Callable[[bytes], str]]] = {
    "/chat": ("/chat", {"text": "talk"}, lambda raw: raw.decode()),
    "/chat/events": ("/chat/events", {"text": "talk"}, sse_answer),
    "/v1/chat/completions": (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": "talk"}], "stream": True},
        sse_answer,
    ),
}


def assert_streamed(pieces: list[tuple[float, str]], upstream: FakeOpenAIServer) -> None:
    assert "".join(text for _, text in pieces) == ANSWER, "byte-exact"
    assert len(pieces) >= 0.9 * len(PIECES), f"{len(pieces)} pieces for {len(PIECES)} upstream pieces"
    first_sent = first_content_sent_at(upstream)
    last_sent = upstream.chat_requests[-1].sent_at[-1]
    assert pieces[0][0] - first_sent < 0.5, "the first piece follows the upstream's first token"
    assert pieces[0][0] < last_sent - 0.5, "long before the upstream finished"


@pytest.mark.parametrize("surface", list(SURFACES))
@pytest.mark.parametrize("protocol", ["native", "json"])
def test_every_http_surface_streams_the_answer(
    serve: Callable[..., LiveServer], upstream: FakeOpenAIServer, surface: str, protocol: str
) -> None:
    upstream.enqueue(text_reply(PIECES, delay=DELAY))
    server = serve(tool_protocol=protocol)
    path, body, extract = SURFACES[surface]
    with (
        httpx.Client(timeout=30) as http,
        http.stream("POST", server.url + path, json=body) as response,
    ):
        assert response.status_code == 200
        pieces = read_pieces(response, extract)
    assert_streamed(pieces, upstream)
    # tools were on offer: the agent, not a plain call, answered
    request = upstream.chat_requests[-1].json
    assert ("tools" in request) == (protocol == "native")


@pytest.mark.parametrize("protocol", ["native", "json"])
def test_the_cli_streams_the_answer(upstream: FakeOpenAIServer, protocol: str) -> None:
    upstream.enqueue(text_reply(PIECES, delay=DELAY))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOKENRELAY_", "OPENAI_"))} | {
        "OPENAI_BASE_URL": upstream.base_url,
        "OPENAI_API_KEY": "sk-test",
        "TOKENRELAY_DB": "memory://",
        "PYTHONIOENCODING": "utf-8",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "tokenrelay.cli", "ask", "talk", "--model", "openai:fake-model",
         "--tool-protocol", protocol],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    assert process.stdout is not None and process.stderr is not None
    pieces: list[tuple[float, bytes]] = []
    with process, process.stdout, process.stderr:
        while True:
            data = os.read(process.stdout.fileno(), 65536)
            if not data:
                break
            pieces.append((time.monotonic(), data))
        assert process.wait(timeout=30) == 0, process.stderr.read()
    text = b"".join(d for _, d in pieces).decode()
    assert text == ANSWER + "\n"
    assert len(pieces) >= 0.9 * len(PIECES)
    assert pieces[0][0] < upstream.chat_requests[-1].sent_at[-1] - 0.5


def narrating_upstream(upstream: FakeOpenAIServer) -> None:
    """A model message that writes text, then calls the calculator; then the answer."""
    upstream.enqueue(
        tool_call_reply(
            [("call_1", "Calculator", ['{"expression": ', '"6*7"}'])],
            text=["Let me ", "compute that."],
            delay=0.01,
        ),
        text_reply(["It is ", "42", "."], delay=0.01),
    )


def test_narration_agrees_across_sse_raw_text_and_the_stored_turn(
    serve: Callable[..., LiveServer], upstream: FakeOpenAIServer
) -> None:
    server = serve()
    narrating_upstream(upstream)
    with httpx.Client(timeout=30) as http:
        response = http.post(server.url + "/chat/events", json={"text": "6*7?", "mode": "full"})
        events = [json.loads(line[6:]) for line in response.text.split("\n") if line.startswith("data: ")]
        session = response.headers["x-session-id"]
        kinds = [e["type"] for e in events]
        assert kinds.index("narration") < kinds.index("tool_call_started")
        narration = next(e["text"] for e in events if e["type"] == "narration")
        assert narration == "Let me compute that.\n\n"
        finished = events[-1]
        assert finished["type"] == "run_finished" and finished["answer"] == "It is 42."
        shown = "".join(e["text"] for e in events if e["type"] == "answer_delta")
        assert shown == "Let me compute that.\n\nIt is 42."

        turn = http.get(server.url + f"/sessions/{session}").json()["turns"][-1]
        assert turn["answer"] == "It is 42."
        assert turn["steps"][0] == {"type": "narration", "text": narration}
        assert turn["steps"][1]["type"] == "tool" and turn["steps"][1]["result"] == "42"
        assert turn["finish_reason"] == "stop"

        narrating_upstream(upstream)
        raw = http.post(server.url + "/chat", json={"text": "6*7?"}).text
        assert raw == "Let me compute that.\n\nIt is 42."  # both, in order, nothing duplicated

        narrating_upstream(upstream)
        held = http.post(server.url + "/chat", json={"text": "6*7?", "answer_policy": "hold"}).text
        assert held == "It is 42."


def length_reply() -> Reply:
    parts = [sse(chunk({"role": "assistant", "content": ""}))]
    parts += [sse(chunk({"content": piece})) for piece in ["a cut ", "off answ"]]
    parts += [sse(chunk(finish_reason="length")), b"data: [DONE]\n\n"]
    return Reply(parts=parts)


def test_length_is_visible_on_every_surface(
    serve: Callable[..., LiveServer], upstream: FakeOpenAIServer
) -> None:
    server = serve()
    with httpx.Client(timeout=30) as http:
        upstream.enqueue(length_reply())
        response = http.post(server.url + "/chat/events", json={"text": "go"})
        last = json.loads(response.text.strip().split("\n")[-1][6:])
        assert last["type"] == "run_finished" and last["finish_reason"] == "length"
        turn = http.get(server.url + f"/sessions/{response.headers['x-session-id']}").json()["turns"][-1]
        assert turn["finish_reason"] == "length" and turn["answer"] == "a cut off answ"

        upstream.enqueue(length_reply())
        body = {"messages": [{"role": "user", "content": "go"}]}
        completion = http.post(server.url + "/v1/chat/completions", json=body).json()
        assert completion["choices"][0]["finish_reason"] == "length"

        upstream.enqueue(length_reply())
        streamed = http.post(server.url + "/v1/chat/completions", json={**body, "stream": True}).text
        reasons = [
            c["finish_reason"]
            for line in streamed.split("\n")
            if line.startswith("data: {")
            for c in json.loads(line[6:])["choices"]
        ]
        assert reasons[-1] == "length"

        upstream.enqueue(length_reply())
        plain = http.post(server.url + "/chat", json={"text": "go", "stream": False}).json()
        assert plain["finish_reason"] == "length" and plain["output"] == "a cut off answ"


def test_stop_after_half_keeps_the_half(serve: Callable[..., LiveServer], upstream: FakeOpenAIServer) -> None:
    server = serve()
    words = [f"w{i} " for i in range(40)]
    upstream.enqueue(text_reply(words, delay=0.03))
    with httpx.Client(timeout=30) as http:
        received = ""
        with http.stream("POST", server.url + "/chat/events", json={"text": "go", "resumable": True}) as r:
            run_id, session = r.headers["x-run-id"], r.headers["x-session-id"]
            for raw in r.iter_raw():
                received += sse_answer(raw)
                if "w19 " in received and "cancel" not in received:
                    http.post(server.url + f"/runs/{run_id}/cancel")
                    received += "cancel"
        received = received.replace("cancel", "")
        assert received.startswith("w0 w1 ") and "w39" not in received
        turn = http.get(server.url + f"/sessions/{session}").json()["turns"][-1]
        assert turn["status"] == "interrupted"
        assert turn["answer"] == received
