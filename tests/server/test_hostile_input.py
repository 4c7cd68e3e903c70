"""Hostile input against a real server: malformed and oversize bodies, session isolation under
API keys while runs are live, the calculator's attack corpus as the model's tool input through
the agent, and SSE framing in everything the model (or an upstream server) can write.

Deeper than tests/server/test_server_transcript.py, which covers the basic bad requests (missing
fields, wrong types, a 3 KB body over a 2 KB limit), API keys on finished runs, and prompt text
with SSE framing echoed back. Model output rendered as HTML in the web page is covered by
tests/e2e/test_web_page.py::test_html_in_an_answer_stays_inert (a browser test).
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from calculator_corpus import PAYLOADS, PWNED_MARKER
from fake_openai import DONE, FakeOpenAIServer, Reply, sse, text_events
from replies import PREFIX, echo, final
from server_fixture import LiveServer, make_app, rss_bytes, wait_until
from tokenrelay.agent.loop import Agent
from tokenrelay.backends.base import FinishChunk, TextChunk, ToolCallChunk
from tokenrelay.backends.openai_compat import OpenAIBackend
from tokenrelay.client import stream_events, stream_text
from tokenrelay.events import RunFinished
from tokenrelay.messages import Message
from tokenrelay.testing import ScriptedBackend
from tokenrelay.tools.registry import Tool

MB = 2**20


def nodelay(server: LiveServer) -> LiveServer:
    """TCP_NODELAY on the listening socket: see tests/server/test_faults.py::nodelay."""
    server._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return server


def error_of(response: httpx.Response) -> str:
    """The JSON error message of a 4xx; fails unless the body has the documented shape."""
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/json"), response.text[:300]
    body = response.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), dict), body
    message = body["error"].get("message")
    assert isinstance(message, str) and message.strip(), body
    return message


def parse_sse(body: str) -> list[tuple[str | None, str | None, str]]:
    """Strict SSE frames (id, event, data): any other line, or a data line split in two, fails."""
    frames = []
    assert body.endswith("\n\n"), body[-100:]
    for block in body[:-2].split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if line.startswith(":"):
                continue
            name, sep, value = line.partition(": ")
            assert sep and name in ("id", "event", "data") and name not in fields, (line, block)
            fields[name] = value
        if "data" in fields:
            frames.append((fields.get("id"), fields.get("event"), fields["data"]))
    return frames


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    servers: list[tuple[LiveServer, Any]] = []

    def start(backend: Any = None, db: Path | None = None, **options: Any) -> LiveServer:
        backend = backend if backend is not None else ScriptedBackend(echo)
        server = nodelay(LiveServer(make_app(db or tmp_path / "hostile.db", backend, **options))).start()
        servers.append((server, backend))
        return server

    yield start
    for server, backend in servers:
        if isinstance(backend, OpenAIBackend) and server._thread.is_alive():
            server.run_in_loop(backend.aclose())
        server.stop()


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as client:
        yield client


# =========================================================================== bodies

JSON = {"content-type": "application/json"}
OPENAI = json.dumps({"messages": [{"role": "user", "content": "hi"}]})


def _with(extra: str) -> bytes:
    """The OpenAI body with one more member."""
    return (OPENAI[:-1] + ", " + extra + "}").encode()


CHAT = ("/chat", "/chat/events")
OPENAI_ONLY = ("/v1/chat/completions",)
ALL = CHAT + OPENAI_ONLY

#: name -> (body, where, says): a 4xx whose JSON error message contains `says` (any case)
HOSTILE_BODIES: dict[str, tuple[bytes, tuple[str, ...], str]] = {
    "deep-array": (b'{"text": ' + b"[" * 200_000 + b"]" * 200_000 + b"}", ALL, ""),
    "deep-object": (b'{"text": "hi", "x": ' + b'{"a":' * 100_000 + b"1" + b"}" * 100_000 + b"}", ALL, ""),
    "deep-openai-extra": (_with('"extra": ' + "[" * 100_000 + "]" * 100_000), ALL, ""),
    "invalid-utf8": (b'{"text": "\xff\xfe bad"}', ALL, ""),
    "overlong-utf8": (b'{"text": "\xc0\xaf"}', ALL, ""),
    "cesu-surrogate": (b'{"text": "\xed\xa0\x80"}', CHAT, "text"),
    "escaped-lone-surrogate": (b'{"text": "\\ud800"}', CHAT, ""),
    "raw-control-char": (b'{"text": "a\x01b"}', ALL, "JSON"),
    "raw-nul": (b'{"text": "a\x00b"}', ALL, "JSON"),
    "escaped-nul": (b'{"text": "a\\u0000b"}', CHAT, "NUL"),
    "openai-nul": (
        json.dumps({"messages": [{"role": "user", "content": "a\x00b"}]}).encode(),
        OPENAI_ONLY,
        "NUL",
    ),
    "huge-integer": (b'{"text": "hi", "stream": ' + b"9" * 100_000 + b"}", ALL, ""),
    "huge-max-tokens": (_with('"max_tokens": ' + "9" * 5000), OPENAI_ONLY, ""),
    "nan-temperature": (_with('"temperature": NaN'), OPENAI_ONLY, "temperature"),
    "infinite-temperature": (_with('"temperature": 1e999'), OPENAI_ONLY, "temperature"),
    "negative-max-tokens": (_with('"max_tokens": -1'), OPENAI_ONLY, "max_tokens"),
    "not-an-object": (b'"text"', ALL, "object"),
    "array-body": (b'[{"text": "hi"}]', ALL, ""),
    "null": (b"null", ALL, "object"),
    "empty": (b"", ALL, "required"),
    "truncated": (b'{"text": "hi', ALL, "JSON"),
    "trailing-garbage": (b'{"text": "hi"} xx', ALL, "JSON"),
    "session-id-object": (b'{"text": "hi", "session_id": {"$ne": null}}', CHAT, "session_id"),
    "session-id-10kb": (json.dumps({"text": "hi", "session_id": "s" * 10_000}).encode(), CHAT, "session_id"),
    "openai-no-user": (
        json.dumps({"messages": [{"role": "system", "content": "x"}]}).encode(),
        OPENAI_ONLY,
        "user",
    ),
    "openai-bad-role": (
        json.dumps({"messages": [{"role": "root", "content": "x"}]}).encode(),
        OPENAI_ONLY,
        "role",
    ),
    "openai-empty-messages": (b'{"messages": []}', OPENAI_ONLY, "messages"),
    "openai-content-number": (b'{"messages": [{"role": "user", "content": 5}]}', OPENAI_ONLY, "content"),
    "openai-empty-content": (b'{"messages": [{"role": "user", "content": ""}]}', OPENAI_ONLY, "empty"),
}


@pytest.fixture(scope="module")
def hostile_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, ScriptedBackend]]:
    backend = ScriptedBackend(echo)
    server = nodelay(LiveServer(make_app(tmp_path_factory.mktemp("hostile") / "h.db", backend)))
    with server:
        yield server, backend


@pytest.mark.parametrize("name", list(HOSTILE_BODIES))
def test_hostile_bodies_are_a_4xx_with_a_json_error(
    hostile_server: tuple[LiveServer, ScriptedBackend], http: httpx.Client, name: str
) -> None:
    server, backend = hostile_server
    body, where, says = HOSTILE_BODIES[name]
    calls = len(backend.calls)
    for path in where:
        started = time.monotonic()
        response = http.post(server.url + path, content=body, headers=JSON)
        assert time.monotonic() - started < 5
        message = error_of(response)
        assert says.lower() in message.lower(), (path, message)
    assert len(backend.calls) == calls  # nothing reached the model
    assert http.get(server.url + "/health").status_code == 200


def test_control_characters_are_accepted_as_text_and_come_back_exactly(
    hostile_server: tuple[LiveServer, ScriptedBackend], http: httpx.Client
) -> None:
    """Escaped control characters (but NUL) are legitimate text: no crash, no mangling."""
    server, _ = hostile_server
    text = "bell\x07 esc\x1b[31m red\x1b[0m del\x7f \x85 \u2028 \u2029 \ufeff \ufffe \U0010ffff"
    assert "".join(stream_text(server.url, text)) == "You said: " + text
    events = list(stream_events(server.url, text))
    assert isinstance(events[-1], RunFinished) and events[-1].answer == "You said: " + text
    response = http.post(
        server.url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": text}]}
    )
    assert response.json()["choices"][0]["message"]["content"] == "You said: " + text


@pytest.mark.parametrize(
    ("name", "says"),
    [("invalid-utf8", "UTF-8"), ("deep-array", "nest"), ("huge-integer", "number")],
)
def test_unparseable_bodies_say_what_is_wrong(
    hostile_server: tuple[LiveServer, ScriptedBackend], http: httpx.Client, name: str, says: str
) -> None:
    server, _ = hostile_server
    response = http.post(server.url + "/chat", content=HOSTILE_BODIES[name][0], headers=JSON)
    assert response.status_code == 400
    assert says.lower() in error_of(response).lower()


@pytest.mark.parametrize("text", [5, None, ["a"], {"t": 1}])
def test_openai_content_parts_with_a_non_string_text_are_a_4xx(
    hostile_server: tuple[LiveServer, ScriptedBackend], http: httpx.Client, text: Any
) -> None:
    server, _ = hostile_server
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": text}]}]}
    response = http.post(server.url + "/v1/chat/completions", json=body)
    error_of(response)


LONE_SURROGATES: dict[str, tuple[str, bytes]] = {
    "openai-content": ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "\\udfff"}]}'),
    "openai-stream-model": (
        "/v1/chat/completions",
        b'{"messages": [{"role": "user", "content": "hi"}], "stream": true, "model": "\\ud800"}',
    ),
    "document-content": ("/sessions/{session}/document", b'{"name": "a.md", "content": "x\\udfffx"}'),
}


@pytest.mark.parametrize("name", list(LONE_SURROGATES))
def test_lone_surrogates_are_a_4xx(
    hostile_server: tuple[LiveServer, ScriptedBackend], http: httpx.Client, name: str
) -> None:
    server, _ = hostile_server
    path, body = LONE_SURROGATES[name]
    session = http.post(server.url + "/sessions").json()["id"]
    method = "PUT" if "document" in path else "POST"
    response = http.request(method, server.url + path.format(session=session), content=body, headers=JSON)
    error_of(response)


def test_a_validation_error_is_not_bigger_than_the_request(
    hostile_server: tuple[LiveServer, ScriptedBackend], http: httpx.Client
) -> None:
    server, _ = hostile_server
    body = ("{" + ",".join(f'"k{i}":1' for i in range(80_000)) + "}").encode()
    assert len(body) < 1_000_000
    response = http.post(server.url + "/chat", content=body, headers=JSON)
    message = error_of(response)
    assert "Extra inputs" in message
    assert len(response.content) < 16_000, f"{len(response.content)} bytes of error for {len(body)} sent"


def test_ten_megabyte_text_fields_are_refused_without_memory_blowup(
    serve: Callable[..., LiveServer], http: httpx.Client
) -> None:
    """10 MB bodies, with and without Content-Length, against the default 1 MB body limit, then
    against a 20 MB body limit where the text limit (32,000 characters) must catch them."""
    backend = ScriptedBackend(echo)
    strict = serve(backend)
    loose = serve(backend, db=None, max_body_bytes=20 * MB)
    ten_mb = json.dumps({"text": "x" * (10 * MB)}).encode()
    openai_ten_mb = json.dumps({"messages": [{"role": "user", "content": "y" * (10 * MB)}]}).encode()
    document = json.dumps({"name": "big.md", "content": "z" * (10 * MB)}).encode()
    session = http.post(loose.url + "/sessions").json()["id"]

    def chunked(data: bytes) -> Iterator[bytes]:
        for i in range(0, len(data), 64 * 1024):
            yield data[i : i + 64 * 1024]

    before = rss_bytes()
    for _ in range(3):
        for path, body in (
            ("/chat", ten_mb),
            ("/chat/events", ten_mb),
            ("/v1/chat/completions", openai_ten_mb),
        ):
            started = time.monotonic()
            response = http.post(strict.url + path, content=body, headers=JSON)
            assert response.status_code == 413 and "larger than 1000000 bytes" in error_of(response)
            try:  # without Content-Length the server may answer 413 before the client is done sending
                response = http.post(strict.url + path, content=chunked(body), headers=JSON)
                assert response.status_code == 413 and "larger than" in error_of(response)
            except (httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadError):
                pass
            response = http.post(loose.url + path, content=body, headers=JSON)
            assert response.status_code == 413 and "the limit is 32000" in error_of(response)
            assert time.monotonic() - started < 10
        response = http.put(loose.url + f"/sessions/{session}/document", content=document, headers=JSON)
        assert response.status_code in (200, 413, 422), response.text[:300]
    grown = rss_bytes() - before
    # the loose server holds each 10 MB body (and its decoded JSON) only while it is handled
    assert grown < 200 * MB, f"RSS grew by {grown / MB:.0f} MB"
    assert backend.calls == []
    for server in (strict, loose):
        assert http.get(server.url + "/health").status_code == 200


def test_hostile_paths_query_strings_and_headers_are_4xx_json(serve: Callable[..., LiveServer]) -> None:
    server = serve()
    with httpx.Client(timeout=10) as http:
        for path in [
            "/sessions/" + "a" * 10_000,
            "/sessions/%00",
            "/sessions/..%2F..%2Fetc%2Fpasswd",
            "/sessions/%F0%9F%92%A9",
            "/sessions/%ff%fe",
            "/runs/%00/events",
            "/runs/" + "r" * 5000 + "/events",
        ]:
            response = http.get(server.url + path)
            assert response.status_code == 404, (path, response.status_code)
            error_of(response)
        for query in ["limit=abc", "limit=-1", "limit=0", "limit=" + "9" * 5000, "limit=1e9", "limit=%00"]:
            error_of(http.get(server.url + "/sessions?" + query))
        run_id = http.post(server.url + "/chat", json={"text": "hi"}).headers["x-run-id"]
        for last_event_id in ["abc", "-5", "9" * 5000, "1e3", "99999", "0x10", "１"]:
            headers = {"Last-Event-ID": last_event_id.encode()}
            response = http.get(server.url + f"/runs/{run_id}/events", headers=headers)
            assert "Last-Event-ID" in error_of(response), last_event_id
        error_of(http.put(server.url + "/chat", json={"text": "hi"}))  # 405
        error_of(http.get(server.url + "/nope"))  # 404
        response = http.post(
            server.url + "/chat", content=b'{"text": "hi"}', headers={"content-type": "text/plain"}
        )
        assert response.status_code == 415 and "Content-Type" in error_of(response)
        assert http.get(server.url + "/health").status_code == 200


# =========================================================================== API keys


def test_a_key_cannot_touch_another_keys_live_run_and_404s_reveal_nothing(
    serve: Callable[..., LiveServer],
) -> None:
    """While k1's run streams, k2 tries every route on k1's session and run: each answers 404
    with the same body as for an id that never existed, and k1's run finishes untouched."""
    words = [f"w{i} " for i in range(60)]
    backend = ScriptedBackend([[PREFIX, *words, '"}']], tokens_per_second=40)  # ~1.5 s
    server = serve(backend, api_keys=frozenset({"k1", "k2"}))
    k1, k2 = {"Authorization": "Bearer k1"}, {"X-API-Key": "k2"}
    url = server.url
    with (
        httpx.Client(timeout=30) as http,
        http.stream("POST", url + "/chat/events", json={"text": "mine"}, headers=k1) as live,
    ):
        session_id, run_id = live.headers["x-session-id"], live.headers["x-run-id"]
        ghost_session, ghost_run = "s_" + "A" * 22, "run_" + "0" * 24

        def attempts(sid: str, rid: str) -> list[httpx.Response]:
            return [
                http.get(url + f"/sessions/{sid}", headers=k2),
                http.post(url + f"/sessions/{sid}/cancel", headers=k2),
                http.delete(url + f"/sessions/{sid}", headers=k2),
                http.put(
                    url + f"/sessions/{sid}/document", json={"name": "a.md", "content": "x"}, headers=k2
                ),
                http.post(url + "/chat", json={"text": "steal", "session_id": sid}, headers=k2),
                http.post(
                    url + "/chat", json={"text": "steal", "session_id": sid, "stream": False}, headers=k2
                ),
                http.post(url + "/chat/events", json={"text": "steal", "session_id": sid}, headers=k2),
                http.post(url + f"/runs/{rid}/cancel", headers=k2),
                http.get(url + f"/runs/{rid}/events", headers=k2),
                http.get(url + f"/runs/{rid}/events", headers={**k2, "Last-Event-ID": "0"}),
            ]

        real, ghost = attempts(session_id, run_id), attempts(ghost_session, ghost_run)
        for mine, never in zip(real, ghost, strict=True):
            assert mine.status_code == never.status_code == 404, (mine.request.url, mine.text)
            assert mine.text.replace(session_id, "ID").replace(run_id, "ID") == never.text.replace(
                ghost_session, "ID"
            ).replace(ghost_run, "ID")
            assert set(mine.headers) == set(never.headers)
        assert http.get(url + "/sessions", headers=k2).json() == []
        body = b"".join(live.iter_raw()).decode()
    frames = parse_sse(body)
    assert frames[-1][1] == "run_finished"
    assert json.loads(frames[-1][2])["answer"] == "".join(words)  # untouched by k2's attempts
    with httpx.Client(timeout=10) as http:
        turns = http.get(url + f"/sessions/{session_id}", headers=k1).json()["turns"]
        assert [(t["user_text"], t["status"]) for t in turns] == [("mine", "complete")]
        assert http.get(url + "/sessions", headers=k2).json() == []


def test_sessions_from_before_keys_were_enabled_belong_to_no_key(
    serve: Callable[..., LiveServer], tmp_path: Path
) -> None:
    db = tmp_path / "keys.db"
    open_server = serve(ScriptedBackend(echo), db=db)
    with httpx.Client(timeout=10) as http:
        sid = http.post(open_server.url + "/chat", json={"text": "before keys"}).headers["x-session-id"]
    open_server.stop()
    keyed = serve(ScriptedBackend(echo), db=db, api_keys=frozenset({"k1"}))
    with httpx.Client(timeout=10) as http:
        k1 = {"Authorization": "Bearer k1"}
        assert http.get(keyed.url + f"/sessions/{sid}", headers=k1).status_code == 404
        assert (
            http.post(keyed.url + "/chat", json={"text": "x", "session_id": sid}, headers=k1).status_code
            == 404
        )
        assert http.get(keyed.url + "/sessions", headers=k1).json() == []
        assert http.get(keyed.url + f"/sessions/{sid}").status_code == 401


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer K1"},
        {"Authorization": "Bearer k1x"},
        {"Authorization": "Bearer k"},
        {"Authorization": "Basic k1"},
        {"Authorization": "Bearer"},
        {"X-API-Key": ""},
        {"X-API-Key": "ｋ1".encode()},
        {"X-API-Key": b"k1\xff"},
        {"Authorization": "Bearer " + "k1" * 3000},
    ],
    ids=[
        "case",
        "suffix",
        "prefix",
        "basic",
        "empty-bearer",
        "empty",
        "fullwidth-utf8",
        "invalid-utf8",
        "6kb",
    ],
)
def test_near_miss_keys_are_401_json(serve: Callable[..., LiveServer], headers: dict[str, Any]) -> None:
    server = serve(api_keys=frozenset({"k1"}))
    with httpx.Client(timeout=10) as http:
        response = http.post(server.url + "/chat", json={"text": "hi"}, headers=headers)
        assert response.status_code == 401
        assert "API key" in error_of(response)


# =========================================================================== calculator, end to end


def _json_action(payload: str) -> str:
    return json.dumps({"action": "Calculator", "action_input": payload}, ensure_ascii=False)


def _calculator_script(native: bool) -> Callable[[Sequence[Message]], Any]:
    """The model's first reply feeds the payload (held in `.payload`) to the Calculator; its
    second reports the observation."""

    def reply(messages: Sequence[Message]) -> Any:
        observation = messages[-1].content if messages[-1].role in ("tool", "user") else ""
        if messages[-1].role == "tool" or observation.startswith("TOOL RESPONSE"):
            if native:
                return [TextChunk("Observed: " + observation[:200])]
            return final("Observed: " + observation[:200])
        if native:
            arguments = json.dumps({"expression": reply.payload}, ensure_ascii=False)  # type: ignore[attr-defined]
            return [
                ToolCallChunk(index=0, id="call_1", name="Calculator", arguments=arguments),
                FinishChunk("tool_calls"),
            ]
        return _json_action(reply.payload)  # type: ignore[attr-defined]

    reply.payload = ""  # type: ignore[attr-defined]
    return reply


@pytest.mark.parametrize("protocol", ["json", "native"])
def test_every_calculator_payload_through_the_agent_is_an_error_observation(
    serve: Callable[..., LiveServer], protocol: str
) -> None:
    """The corpus of tests/tools/test_calculator.py (CVE-2023-29374 and CVE-2023-39631 payloads,
    resource exhaustion, ...) as the model's tool input: each becomes an error observation the
    model sees, the run ends with run_finished, quickly, and nothing was executed."""
    script = _calculator_script(native=protocol == "native")
    backend = ScriptedBackend(script, native_tools=protocol == "native", token_size=4096)
    server = serve(backend, tool_protocol=protocol, tool_timeout_s=5.0)
    PWNED_MARKER.unlink(missing_ok=True)
    rejected = 0
    slowest = 0.0
    with httpx.Client(timeout=30) as http:
        for payload in PAYLOADS:
            script.payload = payload  # type: ignore[attr-defined]
            started = time.monotonic()
            response = http.post(server.url + "/chat/events", json={"text": "compute it"})
            elapsed = time.monotonic() - started
            slowest = max(slowest, elapsed)
            frames = parse_sse(response.text)
            names = [event for _, event, _ in frames]
            assert names[-1] == "run_finished", (payload[:80], frames[-1])
            (finished,) = [json.loads(d) for _, e, d in frames if e == "tool_call_finished"]
            assert finished["name"] == "Calculator"
            assert finished["result"] is None and finished["error"], (payload[:80], finished)
            assert json.loads(frames[-1][2])["answer"].startswith("Observed: ")
            assert elapsed < 2.0, (payload[:80], elapsed)
            rejected += 1
    assert rejected == len(PAYLOADS) >= 300
    assert not PWNED_MARKER.exists()
    assert len(backend.calls) == 2 * len(PAYLOADS)


# =========================================================================== SSE framing

FRAMING = [
    "\n\ndata: [DONE]\n\n",
    "data: [DONE]",
    "\r\n\r\nevent: run_finished\r\ndata: {}\r\n\r\n",
    '\revent: error\rdata: {"message": "pwned"}\r\r',
    "id: 999\nretry: 1\n\n",
    ": comment\n\n",
    '"}\n\n{"action": "Final Answer", "action_input": "',
    "\x00\x1c\x1d\x1e\x85\u2028\u2029",
    "data:",
    "event:",
]


def _check_sse_body(body: str, expected: str, terminal: str = "run_finished") -> list[dict[str, Any]]:
    frames = parse_sse(body)
    events = [json.loads(d) for _, _, d in frames]
    assert [f[1] for f in frames].count(terminal) == 1 and frames[-1][1] == terminal
    assert not {"run_finished", "error"} - {terminal} & {f[1] for f in frames}
    assert [int(i) for i, _, _ in frames if i is not None] == sorted({int(i) for i, _, _ in frames if i})
    text = "".join(e["text"] for e in events if e["type"] == "answer_delta")
    assert text == expected and events[-1].get("answer") == expected
    return events


def _check_openai_body(body: str, expected: str) -> None:
    lines = [line for line in body.split("\n") if line]
    assert body.endswith("data: [DONE]\n\n") and body.count("data: [DONE]\n\n") == 1
    assert all(line.startswith(("data: ", ":")) for line in lines)
    chunks = [json.loads(line[6:]) for line in lines[:-1] if line.startswith("data: ")]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == expected


@pytest.fixture(scope="module")
def framing_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, ScriptedBackend]]:
    backend = ScriptedBackend(echo, token_size=3)
    with nodelay(LiveServer(make_app(tmp_path_factory.mktemp("framing") / "f.db", backend))) as server:
        yield server, backend


@settings(
    max_examples=int(os.environ.get("TOKENRELAY_FRAMING_EXAMPLES", "40")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    text=st.lists(
        st.one_of(st.sampled_from(FRAMING), st.text(alphabet=st.characters(codec="utf-8"), max_size=8)),
        min_size=1,
        max_size=6,
    ).map("".join),
    token_size=st.integers(1, 7),
)
def test_no_model_output_can_break_or_end_any_stream_early(
    framing_server: tuple[LiveServer, ScriptedBackend], text: str, token_size: int
) -> None:
    """Whatever the model writes, cut anywhere: exact text, one terminal event, [DONE] once."""
    server, backend = framing_server
    backend.replies = lambda messages: [
        PREFIX,
        *[
            json.dumps(text)[1:-1][i : i + token_size]
            for i in range(0, len(json.dumps(text)) - 2, token_size)
        ],
        '"}',
    ]
    with httpx.Client(timeout=10) as http:
        raw = http.post(server.url + "/chat", json={"text": "go"})
        assert raw.status_code == 200 and raw.text == text
        _check_sse_body(
            http.post(server.url + "/chat/events", json={"text": "go", "mode": "full"}).text, text
        )
        body = {"messages": [{"role": "user", "content": "go"}], "stream": True}
        _check_openai_body(http.post(server.url + "/v1/chat/completions", json=body).text, text)


def framing_tool(query: str) -> str:
    """Returns SSE framing (a hostile tool result)."""
    return "".join(FRAMING) + query


def test_framing_in_tool_arguments_results_and_error_messages_stays_inside_its_frame(
    serve: Callable[..., LiveServer],
) -> None:
    hostile = "".join(FRAMING)

    def reply(messages: Sequence[Message]) -> str:
        if messages[-1].content.startswith("TOOL RESPONSE"):
            return final("done " + hostile)
        return json.dumps({"action": "Framer", "action_input": hostile})

    backend = ScriptedBackend(reply, token_size=2)
    server = serve(backend)
    runner = server.app.state.runner
    runner.agent = Agent(
        backend, tools=[Tool.from_function(framing_tool, name="Framer")], store=runner.store,
        generation=runner.generation,
    )  # fmt: skip
    with httpx.Client(timeout=10) as http:
        response = http.post(server.url + "/chat/events", json={"text": "go", "mode": "full"})
        events = _check_sse_body(response.text, "done " + hostile)
        started = [e for e in events if e["type"] == "tool_call_started"]
        finished = [e for e in events if e["type"] == "tool_call_finished"]
        assert started[0]["arguments"] == hostile
        assert finished[0]["result"] == hostile + hostile

    # a backend error message full of framing: one error event on SSE, one error chunk on OpenAI
    failing = ScriptedBackend([final("partial answer")], fail_after=12, failure_message=hostile, token_size=4)
    server = serve(failing)
    with httpx.Client(timeout=10) as http:
        events = parse_sse(http.post(server.url + "/chat/events", json={"text": "go"}).text)
        assert [e for _, e, _ in events].count("error") == 1 and events[-1][1] == "error"
        assert "run_finished" not in [e for _, e, _ in events]
        assert json.loads(events[-1][2])["message"] == hostile
        body = {"messages": [{"role": "user", "content": "go"}], "stream": True}
        text = http.post(server.url + "/v1/chat/completions", json=body).text
        assert "[DONE]" not in text.replace(json.dumps(hostile, ensure_ascii=False)[1:-1], "")
        last = [line for line in text.split("\n") if line.startswith("data: ")][-1]
        assert json.loads(last[6:])["error"]["message"] == hostile
    with openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0) as client:
        with pytest.raises(openai.APIError) as info:
            for _ in client.chat.completions.create(
                model="x", messages=[{"role": "user", "content": "go"}], stream=True
            ):
                pass
        assert info.value.message == hostile  # the SDK got the whole message, framing and all


def test_framing_from_an_upstream_server_reaches_the_sdk_exactly(serve: Callable[..., LiveServer]) -> None:
    """An OpenAI-compatible upstream streams content full of SSE framing (JSON-escaped, so legal),
    cut inside escapes and UTF-8 sequences: OpenAIBackend -> agent -> our OpenAI endpoint -> SDK
    delivers it exactly, and our stream is not ended early."""
    hostile = "".join(FRAMING) + "東京 ✓ [DONE]"
    with FakeOpenAIServer() as fake:
        pieces = [hostile[i : i + 3] for i in range(0, len(hostile), 3)]
        parts = b"".join(
            [
                *text_events(pieces),
                sse({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
                DONE,
            ]
        )
        cuts = list(range(0, len(parts), 7))
        fake.handler = lambda record: Reply(parts=[parts[a : a + 7] for a in cuts])
        backend = OpenAIBackend("fake-model", base_url=fake.base_url, api_key="sk-test")
        server = serve(backend, tool_protocol="native")
        runner = server.app.state.runner
        runner.agent = Agent(backend, tools=[], store=runner.store, generation=runner.generation)
        with openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0) as client:
            chunks = list(
                client.chat.completions.create(
                    model="x", messages=[{"role": "user", "content": "go"}], stream=True
                )
            )
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == hostile
            assert chunks[-1].choices[0].finish_reason == "stop"
        events = list(stream_events(server.url, "go"))
        assert isinstance(events[-1], RunFinished) and events[-1].answer == hostile
        assert "".join(stream_text(server.url, "go")) == hostile
        server.run_in_loop(backend.aclose())
        assert wait_until(lambda: fake.active == 0, 2.0)
