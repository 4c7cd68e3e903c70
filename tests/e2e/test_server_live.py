"""What a transcript cannot show, against a real uvicorn over a socket: timing (tokens arrive
as they are generated), client disconnects stopping generation, 100 concurrent streams kept
apart, persistence across a restart, and the tutorial's own client code.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import requests

from replies import echo, final, paced_reply
from server_fixture import LiveServer, make_app, wait_until
from tokenrelay.client import astream_text, stream_text
from tokenrelay.testing import ScriptedBackend

JAPANESE = "こんにちは、世界。東京は日本の首都です。"


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    servers: list[LiveServer] = []

    def start(backend: ScriptedBackend, db: Path | None = None, **settings: Any) -> LiveServer:
        server = LiveServer(make_app(db or tmp_path / "tokenrelay.db", backend, **settings)).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


# --------------------------------------------------------------------------- timing


ENDPOINTS = {
    "/chat": {"text": "count"},
    "/chat/events": {"text": "count"},
    "/v1/chat/completions": {"messages": [{"role": "user", "content": "count"}], "stream": True},
}


@pytest.mark.parametrize("path", list(ENDPOINTS))
def test_the_first_token_arrives_long_before_the_last_is_generated(
    serve: Callable[..., LiveServer], path: str
) -> None:
    words = [f"w{i} " for i in range(20)]
    server = serve(ScriptedBackend([paced_reply(words)], tokens_per_second=20))  # ~1.1 s of generation
    arrivals: list[tuple[float, bytes]] = []
    with httpx.Client(timeout=30) as http:
        start = time.monotonic()
        with http.stream("POST", server.url + path, json=ENDPOINTS[path]) as response:
            assert response.status_code == 200
            for chunk in response.iter_raw():
                arrivals.append((time.monotonic() - start, chunk))
    body = b"".join(c for _, c in arrivals).decode()
    first_word = next(t for t, c in arrivals if b"w0 " in c)  # ids never hold a space
    last_word = next(t for t, c in arrivals if b"w19 " in c)
    # generation takes ~1.05 s; the first word must not wait for it (wide margins: no flakes)
    assert last_word >= 0.8, arrivals
    assert first_word < last_word - 0.5, arrivals
    assert len([t for t, _ in arrivals if t < last_word - 0.3]) >= 5  # many pieces, not one flush
    assert "w19" in body


# --------------------------------------------------------------------------- disconnects


def _read_until(response: httpx.Response, needle: bytes) -> bytes:
    seen = b""
    for chunk in response.iter_raw():
        seen += chunk
        if needle in seen:
            return seen
    raise AssertionError(f"{needle!r} never arrived: {seen!r}")


@pytest.mark.parametrize("path", list(ENDPOINTS))
def test_a_client_disconnect_stops_generation_and_keeps_the_partial_turn(
    serve: Callable[..., LiveServer], path: str
) -> None:
    words = [f"w{i} " for i in range(400)]
    backend = ScriptedBackend([paced_reply(words)], tokens_per_second=40)  # ~10 s if nobody stops it
    server = serve(backend)
    with httpx.Client(timeout=30) as http:
        with http.stream("POST", server.url + path, json=ENDPOINTS[path]) as response:
            session_id = response.headers.get("x-session-id")
            _read_until(response, b"w3 ")
            closed_at = time.monotonic()
        # leaving the `with` closed the connection mid-stream
        assert wait_until(lambda: backend.calls[-1].abandoned, timeout=1.0), (
            "generation did not stop within 1 s"
        )
        assert time.monotonic() - closed_at < 1.0
        call = backend.calls[-1]
        assert not call.finished and call.chunks_sent < len(words)
        sent = call.chunks_sent
        time.sleep(0.2)
        assert backend.calls[-1].chunks_sent == sent  # nothing more is generated

        if path == "/v1/chat/completions":
            assert session_id is None  # the OpenAI endpoint is stateless: nothing to store
            return
        assert session_id is not None

        def turn() -> dict[str, Any]:
            turns = http.get(server.url + f"/sessions/{session_id}").json()["turns"]
            assert len(turns) == 1
            return dict(turns[0])

        assert wait_until(lambda: turn()["status"] != "running", timeout=5.0)
        stored = turn()
        assert stored["status"] == "interrupted"
        full = "".join(words)
        assert stored["answer"].startswith("w0 w1 w2 w3 ") and full.startswith(stored["answer"])
        assert stored["answer"] != full


NON_STREAMING = {
    "/chat": {"text": "count", "stream": False},
    "/v1/chat/completions": {"messages": [{"role": "user", "content": "count"}]},
}


@pytest.mark.parametrize("path", list(NON_STREAMING))
def test_a_client_leaving_a_non_streaming_request_stops_generation(
    serve: Callable[..., LiveServer], path: str
) -> None:
    words = [f"w{i} " for i in range(80)]
    backend = ScriptedBackend([paced_reply(words)], tokens_per_second=40)  # ~2 s
    server = serve(backend)
    with httpx.Client(timeout=0.4) as http, pytest.raises(httpx.TimeoutException):
        http.post(server.url + path, json=NON_STREAMING[path])  # the client gives up, closing the socket
    assert wait_until(lambda: backend.calls[-1].abandoned, timeout=1.0), "generation did not stop within 1 s"


@pytest.mark.anyio
async def test_closing_the_async_client_stops_generation(serve: Callable[..., LiveServer]) -> None:
    backend = ScriptedBackend([paced_reply([f"w{i} " for i in range(400)])], tokens_per_second=40)
    server = serve(backend)
    stream = astream_text(server.url, "count")
    received = ""
    async for piece in stream:
        received += piece
        if "w2 " in received:
            break
    await stream.aclose()
    assert stream.session_id is not None
    stopped = await anyio.to_thread.run_sync(lambda: wait_until(lambda: backend.calls[-1].abandoned, 2.0))
    assert stopped, "generation did not stop"


# --------------------------------------------------------------------------- concurrency


@pytest.mark.anyio
async def test_100_concurrent_chats_each_get_their_own_answer(serve: Callable[..., LiveServer]) -> None:
    backend = ScriptedBackend(echo, tokens_per_second=200, token_size=3)  # paced: the runs interleave
    server = serve(backend)
    prompts = [f"prompt {i}: {uuid.uuid4().hex} {'日本語' * (i % 3)}" for i in range(100)]
    answers: dict[str, tuple[str, str]] = {}
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)

    async with httpx.AsyncClient(timeout=60, limits=limits) as http:

        async def ask(prompt: str) -> None:
            async with http.stream("POST", server.url + "/chat", json={"text": prompt}) as response:
                assert response.status_code == 200
                text = ""
                async for piece in response.aiter_text():
                    text += piece
                answers[prompt] = (text, response.headers["x-session-id"])

        started = time.monotonic()
        with anyio.fail_after(40):
            async with anyio.create_task_group() as tg:
                for prompt in prompts:
                    tg.start_soon(ask, prompt)
        elapsed = time.monotonic() - started

        assert len(answers) == 100
        for prompt, (text, _) in answers.items():
            assert text == "You said: " + prompt
        assert len({sid for _, sid in answers.values()}) == 100
        # one run takes ~0.4 s at this pace; 100 in sequence would take 40 s
        assert elapsed < 20, elapsed

        async def check_history(prompt: str) -> None:
            session_id = answers[prompt][1]
            detail = (await http.get(server.url + f"/sessions/{session_id}")).json()
            assert [(t["user_text"], t["answer"], t["status"]) for t in detail["turns"]] == [
                (prompt, "You said: " + prompt, "complete")
            ]

        async with anyio.create_task_group() as tg:
            for prompt in prompts:
                tg.start_soon(check_history, prompt)

    # the model saw each prompt once, never another session's turn
    for call in backend.calls:
        users = [m.content for m in call.messages if m.role == "user"]
        assert len(users) == 1 and users[0] in answers


# --------------------------------------------------------------------------- restart


def test_sessions_survive_a_restart(serve: Callable[..., LiveServer], tmp_path: Path) -> None:
    db = tmp_path / "persist.db"
    server_a = serve(ScriptedBackend(echo), db=db)
    with httpx.Client(timeout=30) as http:
        response = http.post(server_a.url + "/chat", json={"text": "remember me"})
        session_id = response.headers["x-session-id"]
        assert response.text == "You said: remember me"
    server_a.stop()

    backend_b = ScriptedBackend(echo)
    server_b = serve(backend_b, db=db)
    with httpx.Client(timeout=30) as http:
        detail = http.get(server_b.url + f"/sessions/{session_id}")
        assert detail.status_code == 200
        assert [(t["user_text"], t["answer"], t["status"]) for t in detail.json()["turns"]] == [
            ("remember me", "You said: remember me", "complete")
        ]
        assert session_id in {s["id"] for s in http.get(server_b.url + "/sessions").json()}
        # and the conversation goes on, with the turn from before the restart as memory
        again = http.post(
            server_b.url + "/chat", json={"text": "again", "session_id": session_id, "stream": False}
        )
        assert again.json()["chat_history"] == [
            {"role": "user", "content": "remember me"},
            {"role": "assistant", "content": "You said: remember me"},
        ]
    contents = [(m.role, m.content) for m in backend_b.calls[-1].messages if m.role != "system"]
    assert contents == [("user", "remember me"), ("assistant", "You said: remember me"), ("user", "again")]


# --------------------------------------------------------------------------- the tutorial's client


def tutorial_client(url: str, query: str) -> str:
    """The tutorial's client, as written there (it prints; we collect)."""
    out = ""
    with requests.Session() as session, session.get(url + "/chat", stream=True, json={"text": query}) as r:
        for chunk in r.iter_content():
            out += chunk.decode("utf-8")
    return out


def test_the_tutorial_client_works_for_ascii(serve: Callable[..., LiveServer]) -> None:
    server = serve(ScriptedBackend([final("Hello, world! 2 + 2 = 4")], tokens_per_second=200))
    assert tutorial_client(server.url, "hi") == "Hello, world! 2 + 2 = 4"


def test_the_tutorial_client_breaks_on_japanese_and_our_client_is_the_fix(
    serve: Callable[..., LiveServer],
) -> None:
    """`iter_content()` yields one byte at a time and the tutorial decodes each one alone, so
    the first multi-byte character raises. Decoding incrementally fixes it:
    `r.iter_content(decode_unicode=True)` (requests takes the charset from Content-Type), or
    the bundled client, `tokenrelay.client.stream_text`."""
    server = serve(ScriptedBackend([final(JAPANESE)], tokens_per_second=200, token_size=2))
    with pytest.raises(UnicodeDecodeError):
        tutorial_client(server.url, "こんにちは")

    with (
        requests.Session() as session,
        session.get(server.url + "/chat", stream=True, json={"text": "こんにちは"}) as r,
    ):
        assert r.encoding == "utf-8"
        assert "".join(str(piece) for piece in r.iter_content(decode_unicode=True)) == JAPANESE

    pieces = list(stream_text(server.url, "こんにちは"))
    assert "".join(pieces) == JAPANESE
    assert len(pieces) > 1 and "\ufffd" not in "".join(pieces)
