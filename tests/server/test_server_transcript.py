"""Whole HTTP transcripts against a real uvicorn server (tests/server_fixture.py).

Each test starts the app on a free port with a `ScriptedBackend` and a SQLite store in
tmp_path, then talks to it over a socket: with httpx for exact bytes and headers, with the
official OpenAI SDK and `requests` where a third-party client's view is the point, and with the
bundled client. ASGITransport is not used: it buffers bodies and cannot cut a response short.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import requests

from replies import echo, final
from server_fixture import LiveServer, make_app
from tokenrelay.client import IncompleteStreamError, TokenrelayHTTPError, stream_events, stream_text
from tokenrelay.events import AnswerDelta, RunFinished
from tokenrelay.testing import ScriptedBackend

#: Japanese, a quote, a closing brace, a newline: everything JSON extraction could trip on
ANSWER = '東京は日本の首都です。He said "hi" } {ok}\nline 2 — done ✓'
TIMEOUT = httpx.Timeout(30.0)


def parse_sse(body: str) -> list[dict[str, Any]]:
    """A test-side SSE parser (independent of the client's): one dict per frame, comments kept."""
    frames: list[dict[str, Any]] = []
    assert "\r" not in body.replace("\\r", "")  # the server frames with LF only
    for block in body.split("\n\n"):
        if not block:
            continue
        frame: dict[str, Any] = {"comments": [], "data": []}
        for line in block.split("\n"):
            if line.startswith(":"):
                frame["comments"].append(line[1:].strip())
                continue
            name, _, value = line.partition(": ")
            if name == "data":
                frame["data"].append(value)
            else:
                frame[name] = value
        frames.append(frame)
    return frames


def events_of(body: str) -> list[tuple[int, str, dict[str, Any]]]:
    out = []
    for frame in parse_sse(body):
        if frame["data"]:
            out.append((int(frame["id"]), frame["event"], json.loads("\n".join(frame["data"]))))
    return out


def error_message(response: httpx.Response) -> str:
    body = response.json()
    assert set(body) >= {"error"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return str(body["error"]["message"])


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    """`serve(backend, **settings)` starts a server; all are stopped at the end of the test."""
    servers: list[LiveServer] = []

    def start(backend: ScriptedBackend | None = None, **settings: Any) -> LiveServer:
        backend = backend or ScriptedBackend([final(ANSWER)], token_size=3)
        server = LiveServer(make_app(tmp_path / "tokenrelay.db", backend, **settings)).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=TIMEOUT) as client:
        yield client


_sdk_clients: list[openai.OpenAI] = []


def sdk(server: LiveServer, api_key: str = "x") -> openai.OpenAI:
    """The official OpenAI SDK pointed at the server (closed after the test)."""
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=api_key, max_retries=0, timeout=30.0)
    _sdk_clients.append(client)
    return client


@pytest.fixture(autouse=True)
def _close_sdk_clients() -> Iterator[None]:
    yield
    while _sdk_clients:
        _sdk_clients.pop().close()


# --------------------------------------------------------------------------- the tutorial's routes


def test_health(serve: Callable[..., LiveServer], http: httpx.Client) -> None:
    server = serve()
    response = http.get(server.url + "/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "🤙"
    assert body["model"] == "scripted"
    try:
        expected = version("tokenrelay")
    except PackageNotFoundError:  # pragma: no cover
        expected = "0"
    assert body["version"] == expected


def test_chat_streams_the_exact_answer_with_streaming_headers(
    serve: Callable[..., LiveServer], http: httpx.Client
) -> None:
    server = serve()
    with http.stream(
        "POST", server.url + "/chat", json={"text": "What is the capital of Japan?"}
    ) as response:
        assert response.status_code == 200
        body = b"".join(response.iter_raw())
    assert body.decode("utf-8") == ANSWER
    headers = response.headers
    assert headers["content-type"] == "text/plain; charset=utf-8"
    assert headers["cache-control"] == "no-cache"
    assert headers["x-accel-buffering"] == "no"
    assert headers["transfer-encoding"] == "chunked"
    assert headers["x-session-id"].startswith("s_")
    assert headers["x-run-id"].startswith("run_")
    # the turn is stored under the session the header names
    session = http.get(server.url + f"/sessions/{headers['x-session-id']}").json()
    assert [(t["user_text"], t["answer"], t["status"], t["run_id"]) for t in session["turns"]] == [
        ("What is the capital of Japan?", ANSWER, "complete", headers["x-run-id"])
    ]


def test_get_chat_with_a_json_body_as_the_tutorial_client_sends_it(
    serve: Callable[..., LiveServer], http: httpx.Client
) -> None:
    server = serve()
    response = http.request("GET", server.url + "/chat", json={"text": "hi"})
    assert response.status_code == 200
    assert response.text == ANSWER
    assert response.headers["content-type"] == "text/plain; charset=utf-8"


def test_stream_false_returns_the_tutorial_json_with_the_previous_turns(
    serve: Callable[..., LiveServer], http: httpx.Client
) -> None:
    server = serve(ScriptedBackend(echo))
    first = http.post(server.url + "/chat", json={"text": "one", "stream": False})
    assert first.status_code == 200
    assert first.headers["content-type"] == "application/json"
    body = first.json()
    assert set(body) >= {"input", "chat_history", "output", "session_id", "run_id"}
    assert body["input"] == "one"
    assert body["chat_history"] == []
    assert body["output"] == "You said: one"
    assert body["session_id"] == first.headers["x-session-id"]
    assert body["run_id"] == first.headers["x-run-id"]

    second = http.post(
        server.url + "/chat", json={"text": "two", "stream": False, "session_id": body["session_id"]}
    )
    body2 = second.json()
    assert body2["input"] == "two"
    assert body2["output"] == "You said: two"
    assert body2["session_id"] == body["session_id"]
    assert body2["chat_history"] == [
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "You said: one"},
    ]


# --------------------------------------------------------------------------- typed SSE


def test_chat_events_transcript(serve: Callable[..., LiveServer], http: httpx.Client) -> None:
    server = serve()
    response = http.post(server.url + "/chat/events", json={"text": "capital?"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    events = events_of(response.text)
    ids = [event_id for event_id, _, _ in events]
    assert ids == sorted(set(ids)) and ids[0] == 0  # strictly increasing
    for _, name, data in events:
        assert name == data["type"]
    assert events[0][1] == "run_started"
    assert events[0][2]["run_id"] == response.headers["x-run-id"]
    assert events[0][2]["session_id"] == response.headers["x-session-id"]
    name, last = events[-1][1], events[-1][2]
    assert name == "run_finished"
    assert last["answer"] == ANSWER
    assert last["usage"]["completion_tokens"] > 0
    assert (
        last["usage"]["total_tokens"] == last["usage"]["prompt_tokens"] + last["usage"]["completion_tokens"]
    )
    assert last["timings"]["total_s"] >= last["timings"]["first_token_s"] >= 0
    assert "".join(d["text"] for _, n, d in events if n == "answer_delta") == ANSWER
    assert [n for _, n, _ in events].count("run_finished") == 1
    # the bundled client reads the same stream
    received = list(stream_events(server.url, "capital?"))
    assert isinstance(received[-1], RunFinished) and received[-1].answer == ANSWER
    assert "".join(e.text for e in received if isinstance(e, AnswerDelta)) == ANSWER


def test_resume_with_last_event_id(serve: Callable[..., LiveServer], http: httpx.Client) -> None:
    server = serve()
    response = http.post(server.url + "/chat/events", json={"text": "capital?"})
    run_id = response.headers["x-run-id"]
    events = events_of(response.text)
    cut = events[1][0]  # after the first answer frame
    resumed = http.get(server.url + f"/runs/{run_id}/events", headers={"Last-Event-ID": str(cut)})
    assert resumed.status_code == 200
    tail = events_of(resumed.text)
    assert tail and all(event_id > cut for event_id, _, _ in tail)
    text = "".join(d["text"] for i, n, d in events if n == "answer_delta" and i <= cut)
    text += "".join(d["text"] for _, n, d in tail if n == "answer_delta")
    assert text == ANSWER
    assert tail[-1][1] == "run_finished"
    bad = http.get(server.url + f"/runs/{run_id}/events", headers={"Last-Event-ID": "x"})
    assert bad.status_code == 422 and "Last-Event-ID" in error_message(bad)


def test_keepalive_comments_while_the_backend_is_slow(
    serve: Callable[..., LiveServer], http: httpx.Client
) -> None:
    reply = ['{"action": "Final Answer", "action_input": "', "slow", " answer", '"}']
    server = serve(ScriptedBackend([reply], tokens_per_second=4), keepalive_s=0.1)  # ~0.75 s
    response = http.post(server.url + "/chat/events", json={"text": "take your time"})
    frames = parse_sse(response.text)
    keepalives = [f for f in frames if f["comments"] and not f["data"]]
    assert len(keepalives) >= 2, response.text
    events = events_of(response.text)
    assert events[-1][1] == "run_finished" and events[-1][2]["answer"] == "slow answer"
    # the raw text stream never carries keep-alives: its body is the answer, exactly
    assert http.post(server.url + "/chat", json={"text": "take your time"}).text == "slow answer"


def test_mode_full_adds_reasoning_deltas(serve: Callable[..., LiveServer], http: httpx.Client) -> None:
    server = serve()
    plain = events_of(http.post(server.url + "/chat/events", json={"text": "q"}).text)
    assert "reasoning_delta" not in {n for _, n, _ in plain}
    requests_: list[tuple[str, dict[str, Any]]] = [
        ("/chat/events?mode=full", {"text": "q"}),
        ("/chat/events", {"text": "q", "mode": "full"}),
    ]
    for path, body in requests_:
        full = events_of(http.post(server.url + path, json=body).text)
        reasoning = "".join(d["text"] for _, n, d in full if n == "reasoning_delta")
        assert reasoning == final(ANSWER)  # the raw model output
        assert "".join(d["text"] for _, n, d in full if n == "answer_delta") == ANSWER
        assert full[-1][2]["answer"] == ANSWER


# --------------------------------------------------------------------------- OpenAI-compatible


def test_v1_models(serve: Callable[..., LiveServer], http: httpx.Client) -> None:
    server = serve()
    assert [m.id for m in sdk(server).models.list()] == ["scripted"]
    body = http.get(server.url + "/v1/models").json()
    assert body["object"] == "list" and body["data"][0]["object"] == "model"


def test_openai_sdk_non_stream_and_stream(serve: Callable[..., LiveServer]) -> None:
    server = serve()
    client = sdk(server)
    messages: list[Any] = [{"role": "user", "content": "capital?"}]
    completion = client.chat.completions.create(model="x", messages=messages)
    assert completion.choices[0].message.content == ANSWER
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens > 0

    chunks = list(client.chat.completions.create(model="x", messages=messages, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ANSWER
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")

    with_usage = list(
        client.chat.completions.create(
            model="x", messages=messages, stream=True, stream_options={"include_usage": True}
        )
    )
    usage_chunk = with_usage[-1]
    assert usage_chunk.choices == []
    assert usage_chunk.usage is not None
    assert (
        usage_chunk.usage.total_tokens
        == usage_chunk.usage.prompt_tokens + usage_chunk.usage.completion_tokens
    )
    assert usage_chunk.usage.completion_tokens > 0
    assert "".join(c.choices[0].delta.content or "" for c in with_usage if c.choices) == ANSWER


def test_openai_history_is_passed_to_the_model(serve: Callable[..., LiveServer]) -> None:
    backend = ScriptedBackend(echo)
    server = serve(backend)
    messages: list[Any] = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "You said: first"},
        {"role": "user", "content": "second"},
    ]
    completion = sdk(server).chat.completions.create(model="x", messages=messages)
    assert completion.choices[0].message.content == "You said: second"
    seen = [(m.role, m.content) for m in backend.calls[-1].messages if m.role != "system"]
    assert seen == [("user", "first"), ("assistant", "You said: first"), ("user", "second")]


def test_tool_steps_never_leak_into_the_answer(serve: Callable[..., LiveServer], http: httpx.Client) -> None:
    tool_call = json.dumps({"action": "Calculator", "action_input": "2**10"})
    backend = ScriptedBackend([tool_call, final("2 to the 10th is 1024.")], token_size=5)
    server = serve(backend)
    client = sdk(server)
    messages: list[Any] = [{"role": "user", "content": "what is 2**10?"}]

    completion = client.chat.completions.create(model="x", messages=messages)
    assert completion.choices[0].message.content == "2 to the 10th is 1024."
    assert len(backend.calls) == 2
    assert "1024" in backend.calls[1].messages[-1].content  # the tool's result went to the model

    backend.calls.clear()
    chunks = list(client.chat.completions.create(model="x", messages=messages, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "2 to the 10th is 1024."

    backend.calls.clear()
    assert http.post(server.url + "/chat", json={"text": "what is 2**10?"}).text == "2 to the 10th is 1024."

    backend.calls.clear()
    events = events_of(http.post(server.url + "/chat/events", json={"text": "what is 2**10?"}).text)
    names = [n for _, n, _ in events]
    assert names.index("tool_call_started") < names.index("tool_call_finished") < names.index("answer_delta")
    started = next(d for _, n, d in events if n == "tool_call_started")
    finished = next(d for _, n, d in events if n == "tool_call_finished")
    assert (started["name"], started["arguments"]) == ("Calculator", "2**10")
    assert finished["call_id"] == started["call_id"] and finished["result"] == "1024"
    assert events[-1][2]["answer"] == "2 to the 10th is 1024."


# --------------------------------------------------------------------------- failures


FAILURE = "the model server went away"


def test_a_mid_stream_backend_failure_never_looks_complete(
    serve: Callable[..., LiveServer], http: httpx.Client
) -> None:
    reply = final(ANSWER)
    prefix = len('{"action": "Final Answer", "action_input": "')
    backend = ScriptedBackend([reply], token_size=2, fail_after=prefix // 2 + 5, failure_message=FAILURE)
    server = serve(backend)

    # typed SSE: the stream ends with an error event that says what failed, with the partial answer
    events = events_of(http.post(server.url + "/chat/events", json={"text": "q"}).text)
    assert events[-1][1] == "error"
    assert FAILURE in events[-1][2]["message"] and events[-1][2]["code"] == "backend"
    partial = "".join(d["text"] for _, n, d in events if n == "answer_delta")
    assert partial and ANSWER.startswith(partial) and partial != ANSWER
    assert events[-1][2]["answer"] == partial
    assert "run_finished" not in {n for _, n, _ in events}

    # OpenAI SDK: iteration raises APIError (no [DONE] after the error)
    stream = sdk(server).chat.completions.create(
        model="x", messages=[{"role": "user", "content": "q"}], stream=True
    )
    got = []
    with pytest.raises(openai.APIError, match=FAILURE):
        for chunk in stream:
            got.append(chunk.choices[0].delta.content or "")
    assert ANSWER.startswith("".join(got))
    with pytest.raises(openai.APIStatusError, match=FAILURE) as info:
        sdk(server).chat.completions.create(model="x", messages=[{"role": "user", "content": "q"}])
    assert info.value.status_code == 502

    # raw /chat: the body is cut without the chunked terminator
    with pytest.raises(IncompleteStreamError) as incomplete:
        for _ in stream_text(server.url, "q"):
            pass
    assert incomplete.value.partial_text == partial
    with (
        pytest.raises(httpx.RemoteProtocolError),
        http.stream("POST", server.url + "/chat", json={"text": "q"}) as r,
    ):
        r.read()
    with requests.post(server.url + "/chat", json={"text": "q"}, stream=True, timeout=30) as r:
        received = b""
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            for piece in r.iter_content(chunk_size=None):
                received += piece
    assert received.decode("utf-8") == partial

    # stream:false: an error status with the message and the partial answer
    response = http.post(server.url + "/chat", json={"text": "q", "stream": False})
    assert response.status_code == 502
    assert FAILURE in error_message(response)
    assert response.json()["output"] == partial

    # the failed turns are stored as failed, with what was said
    sessions = http.get(server.url + "/sessions").json()
    turns = [t for s in sessions for t in http.get(server.url + f"/sessions/{s['id']}").json()["turns"]]
    assert turns and all(t["status"] == "failed" and t["answer"] == partial for t in turns)
    assert all(FAILURE in t["error"] for t in turns)


def test_sessions_list_get_delete(serve: Callable[..., LiveServer], http: httpx.Client) -> None:
    server = serve(ScriptedBackend(echo))
    first = http.post(server.url + "/chat", json={"text": "first question"}).headers["x-session-id"]
    second = http.post(server.url + "/chat", json={"text": "second question"}).headers["x-session-id"]
    http.post(server.url + "/chat", json={"text": "follow-up", "session_id": first})

    listed = http.get(server.url + "/sessions").json()
    assert [s["id"] for s in listed] == [first, second]  # most recently updated first
    assert {s["title"] for s in listed} == {"first question", "second question"}
    assert [s["id"] for s in http.get(server.url + "/sessions?limit=1").json()] == [first]
    assert http.get(server.url + "/sessions?limit=0").status_code == 422

    detail = http.get(server.url + f"/sessions/{first}").json()
    assert [(t["user_text"], t["answer"], t["status"]) for t in detail["turns"]] == [
        ("first question", "You said: first question", "complete"),
        ("follow-up", "You said: follow-up", "complete"),
    ]
    assert detail["active_run_id"] is None

    created = http.post(server.url + "/sessions")
    assert created.status_code == 201 and created.json()["id"].startswith("s_")

    assert http.delete(server.url + f"/sessions/{first}").status_code == 204
    missing = http.get(server.url + f"/sessions/{first}")
    assert missing.status_code == 404 and first in error_message(missing)
    assert http.delete(server.url + f"/sessions/{first}").status_code == 404
    assert first not in {s["id"] for s in http.get(server.url + "/sessions").json()}
    assert http.get(server.url + f"/sessions/{second}").status_code == 200


def test_cancel_by_run_id(serve: Callable[..., LiveServer], http: httpx.Client) -> None:
    long_answer = "word " * 200
    server = serve(ScriptedBackend([final(long_answer)], tokens_per_second=50))  # ~5 s if not cancelled
    started = time.monotonic()
    with http.stream("POST", server.url + "/chat/events", json={"text": "go"}) as response:
        run_id = response.headers["x-run-id"]
        session_id = response.headers["x-session-id"]
        body = ""
        cancelled = None
        for text in response.iter_text():
            body += text
            if cancelled is None and '"answer_delta"' in body:
                cancelled = http.post(server.url + f"/runs/{run_id}/cancel")
    assert time.monotonic() - started < 4
    assert cancelled is not None and cancelled.status_code == 202
    assert cancelled.json() == {"run_id": run_id, "cancelled": True}
    events = events_of(body)
    assert events[-1][1] == "error" and events[-1][2]["code"] == "cancelled"
    partial = "".join(d["text"] for _, n, d in events if n == "answer_delta")
    assert partial and long_answer.startswith(partial) and partial != long_answer
    assert events[-1][2]["answer"] == partial

    turns = http.get(server.url + f"/sessions/{session_id}").json()["turns"]
    assert [(t["status"], t["answer"]) for t in turns] == [("interrupted", partial)]
    again = http.post(server.url + f"/runs/{run_id}/cancel")
    assert again.status_code == 202 and again.json()["cancelled"] is False
    unknown = http.post(server.url + "/runs/run_nope/cancel")
    assert unknown.status_code == 404 and "run_nope" in error_message(unknown)


# --------------------------------------------------------------------------- bad input


def _chunks(data: bytes) -> list[bytes]:
    """Sent as a generator, so with `Transfer-Encoding: chunked` and no Content-Length."""
    return [data[i : i + 500] for i in range(0, len(data), 500)]


BAD_REQUESTS: list[Any] = [
    pytest.param(
        {"content": b'{"text": "unterminated', "headers": {"content-type": "application/json"}},
        422, "JSON", id="invalid-json",
    ),
    pytest.param({"json": {}}, 422, "text", id="missing-text"),
    pytest.param({"json": {"text": 42}}, 422, "text", id="text-not-a-string"),
    pytest.param({"json": {"text": ""}}, 422, "text", id="empty-text"),
    pytest.param({"json": {"text": " \n\t "}}, 422, "empty", id="blank-text"),
    pytest.param({"json": {"text": "x" * 101}}, 413, "limit is 100", id="text-too-long"),
    pytest.param({"json": {"text": "a\x00b"}}, 422, "NUL", id="nul"),
    pytest.param({"json": {"text": "hi", "session_id": "s_missing"}}, 404, "s_missing", id="unknown-session"),
    pytest.param({"json": {"text": "hi", "mode": "loud"}}, 422, "mode", id="bad-mode"),
    pytest.param({"json": {"text": "hi", "colour": "red"}}, 422, "colour", id="unknown-field"),
    pytest.param({"json": ["text"]}, 422, "body", id="not-an-object"),
    pytest.param(
        {"content": b'{"text": "hi"}', "headers": {"content-type": "text/plain"}},
        415, "content", id="wrong-content-type",
    ),
    pytest.param(
        {"content": json.dumps({"text": "x" * 3000}).encode(),
         "headers": {"content-type": "application/json"}},
        413, "larger than 2000 bytes", id="body-too-large",
    ),
    pytest.param(
        {"chunks": _chunks(json.dumps({"text": "x" * 3000}).encode()),
         "headers": {"content-type": "application/json"}},
        413, "larger than 2000 bytes", id="chunked-body-too-large",
    ),
]  # fmt: skip


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, ScriptedBackend]]:
    """One server with small limits for all the bad-input cases (none of them reaches the model)."""
    backend = ScriptedBackend([final(ANSWER)])
    app = make_app(
        tmp_path_factory.mktemp("strict") / "t.db", backend, max_text_chars=100, max_body_bytes=2000
    )
    with LiveServer(app) as server:
        yield server, backend
    assert backend.calls == []  # no model call for a rejected request


@pytest.mark.parametrize(("request_kwargs", "status", "says"), BAD_REQUESTS)
@pytest.mark.parametrize("path", ["/chat", "/chat/events"])
def test_bad_input_is_a_4xx_json_error_that_says_what_is_wrong(
    strict_server: tuple[LiveServer, ScriptedBackend],
    http: httpx.Client,
    path: str,
    request_kwargs: dict[str, Any],
    status: int,
    says: str,
) -> None:
    server, backend = strict_server
    request_kwargs = dict(request_kwargs)
    if "chunks" in request_kwargs:
        request_kwargs["content"] = iter(request_kwargs.pop("chunks"))
    response = http.post(server.url + path, **request_kwargs)
    assert response.headers["content-type"] == "application/json"
    message = error_message(response)
    assert says.lower() in message.lower(), message
    assert response.status_code == status, message
    assert backend.calls == []


def test_bad_input_on_the_openai_endpoint(serve: Callable[..., LiveServer], http: httpx.Client) -> None:
    server = serve(max_text_chars=100)
    url = server.url + "/v1/chat/completions"
    cases: list[tuple[Any, int, str]] = [
        ({"messages": []}, 422, "messages"),
        ({"messages": [{"role": "system", "content": "hi"}]}, 422, "user message"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, 422, "role"),
        ({"messages": [{"role": "user", "content": "x" * 101}]}, 413, "limit is 100"),
        ({"messages": [{"role": "user", "content": ""}]}, 422, "empty"),
    ]
    for body, status, says in cases:
        response = http.post(url, json=body)
        assert response.status_code == status, (body, response.text)
        assert says in error_message(response), (body, response.text)
    with pytest.raises(openai.UnprocessableEntityError, match="user message"):
        sdk(server).chat.completions.create(model="x", messages=[{"role": "system", "content": "hi"}])


def test_the_bundled_client_reports_the_server_message(serve: Callable[..., LiveServer]) -> None:
    server = serve(max_text_chars=100)
    with pytest.raises(TokenrelayHTTPError) as info:
        list(stream_text(server.url, "x" * 101))
    assert info.value.status == 413
    assert info.value.message == "text is 101 characters; the limit is 100"
    with pytest.raises(TokenrelayHTTPError) as info:
        list(stream_events(server.url, "hi", session_id="s_nope"))
    assert info.value.status == 404 and "s_nope" in info.value.message


# --------------------------------------------------------------------------- API keys


def test_api_keys(serve: Callable[..., LiveServer], http: httpx.Client) -> None:
    server = serve(ScriptedBackend(echo), api_keys=frozenset({"k1", "k2"}))
    url = server.url
    k1 = {"Authorization": "Bearer k1"}
    k2 = {"X-API-Key": "k2"}

    assert http.get(url + "/health").status_code == 200  # liveness needs no key
    for headers in ({}, {"Authorization": "Bearer nope"}, {"X-API-Key": "k1x"}, {"Authorization": "k1"}):
        response = http.post(url + "/chat", json={"text": "hi"}, headers=headers)
        assert response.status_code == 401, headers
        assert "API key" in error_message(response)
        assert response.headers["www-authenticate"] == "Bearer"
    assert http.get(url + "/sessions").status_code == 401
    assert http.get(url + "/v1/models").status_code == 401
    with pytest.raises(openai.AuthenticationError):
        sdk(server, api_key="wrong").models.list()
    assert [m.id for m in sdk(server, api_key="k1").models.list()] == ["scripted"]

    created = http.post(url + "/chat", json={"text": "k1's secret"}, headers=k1)
    assert created.status_code == 200 and created.text == "You said: k1's secret"
    session_id, run_id = created.headers["x-session-id"], created.headers["x-run-id"]
    assert http.get(url + f"/sessions/{session_id}", headers={"X-API-Key": "k1"}).status_code == 200

    # k2 sees nothing of k1's: every route answers as if the session or run did not exist
    denied = [
        http.get(url + f"/sessions/{session_id}", headers=k2),
        http.post(url + "/chat", json={"text": "continue", "session_id": session_id}, headers=k2),
        http.post(
            url + "/chat", json={"text": "continue", "session_id": session_id, "stream": False}, headers=k2
        ),
        http.post(url + "/chat/events", json={"text": "continue", "session_id": session_id}, headers=k2),
        http.post(url + f"/sessions/{session_id}/cancel", headers=k2),
        http.post(url + f"/runs/{run_id}/cancel", headers=k2),
        http.get(url + f"/runs/{run_id}/events", headers=k2),
        http.delete(url + f"/sessions/{session_id}", headers=k2),
    ]
    for response in denied:
        assert response.status_code == 404, (response.request.method, response.request.url, response.text)
        assert "k1's secret" not in response.text
    assert http.get(url + "/sessions", headers=k2).json() == []
    assert "".join(stream_text(url, "mine", api_key="k2")) == "You said: mine"
    assert len(http.get(url + "/sessions", headers=k2).json()) == 1

    # k1's session is intact, and k1 can still do everything k2 could not
    turns = http.get(url + f"/sessions/{session_id}", headers=k1).json()["turns"]
    assert [t["user_text"] for t in turns] == ["k1's secret"]
    assert http.post(url + f"/runs/{run_id}/cancel", headers=k1).status_code == 202
    assert http.get(url + f"/runs/{run_id}/events", headers=k1).status_code == 200
    assert http.delete(url + f"/sessions/{session_id}", headers=k1).status_code == 204


def test_health_counts_the_active_runs_of_the_callers_key(
    serve: Callable[..., LiveServer], http: httpx.Client
) -> None:
    reply = ['{"action": "Final Answer", "action_input": "', "slow", '"}']
    # slow enough that a loaded machine cannot finish the run before /health answers
    server = serve(ScriptedBackend([reply], tokens_per_second=0.2), api_keys=frozenset({"k1", "k2"}))
    with http.stream(
        "POST", server.url + "/chat/events", json={"text": "q"}, headers={"X-API-Key": "k1"}
    ) as r:
        chunks = r.iter_raw()  # keep the iterator: dropping it closes the stream (a disconnect)
        next(chunks)  # the run has started
        assert http.get(server.url + "/health", headers={"X-API-Key": "k1"}).json()["active_runs"] == 1
        assert http.get(server.url + "/health", headers={"X-API-Key": "k2"}).json()["active_runs"] == 0
        assert "active_runs" not in http.get(server.url + "/health").json()  # no key: liveness only


def test_the_bundled_client_takes_the_key_from_the_environment(
    serve: Callable[..., LiveServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = serve(ScriptedBackend(echo), api_keys=frozenset({"k1"}))
    monkeypatch.delenv("TOKENRELAY_API_KEY", raising=False)
    with pytest.raises(TokenrelayHTTPError) as info:
        list(stream_text(server.url, "hi"))
    assert info.value.status == 401 and "k1" not in str(info.value)
    monkeypatch.setenv("TOKENRELAY_API_KEY", "k1")
    assert "".join(stream_text(server.url, "hi")) == "You said: hi"


# --------------------------------------------------------------------------- framing


INJECTION = (
    'a\n\ndata: [DONE]\n\nevent: error\ndata: {"error": {"message": "pwned"}}\n\n'
    "id: 999\r\n\r\n: comment\rretry: 1\n"
    "\u2028\u2029\x85\x0b\x0c\x1c} end"
)


def test_prompt_text_cannot_break_any_endpoint_framing(
    serve: Callable[..., LiveServer], http: httpx.Client
) -> None:
    server = serve(ScriptedBackend(echo, token_size=3))
    expected = "You said: " + INJECTION

    assert http.post(server.url + "/chat", json={"text": INJECTION}).text == expected
    assert "".join(stream_text(server.url, INJECTION)) == expected
    assert (
        http.post(server.url + "/chat", json={"text": INJECTION, "stream": False}).json()["output"]
        == expected
    )

    response = http.post(server.url + "/chat/events", json={"text": INJECTION})
    events = events_of(response.text)
    assert [n for _, n, _ in events if n in ("error", "run_finished")] == ["run_finished"]
    assert "".join(d["text"] for _, n, d in events if n == "answer_delta") == expected
    assert events[-1][2]["answer"] == expected
    received = list(stream_events(server.url, INJECTION))
    assert "".join(e.text for e in received if isinstance(e, AnswerDelta)) == expected
    assert isinstance(received[-1], RunFinished) and received[-1].answer == expected

    client = sdk(server)
    messages: list[Any] = [{"role": "user", "content": INJECTION}]
    assert client.chat.completions.create(model="x", messages=messages).choices[0].message.content == expected
    chunks = list(client.chat.completions.create(model="x", messages=messages, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected
    assert chunks[-1].choices[0].finish_reason == "stop"
