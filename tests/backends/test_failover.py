"""Several upstream model servers behind one backend (`FailoverBackend`), against real HTTP
servers (tests/fake_openai.py) over real sockets: health-aware round robin, failover before
the first token only (never two models' answers spliced together), cooldown, and the
`openai:<model>` + comma-separated base URL list end to end through the server.

Each fake upstream answers with text that names it ("a says hi"), so a test can tell which
upstream an answer came from and that it came whole from one.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import aclosing
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from fake_openai import (
    Drop,
    FakeOpenAIServer,
    Reply,
    Sleep,
    error_reply,
    sse,
    text_events,
    text_reply,
)
from server_fixture import LiveServer
from tokenrelay.backends import load_backend
from tokenrelay.backends.base import FinishChunk, ModelChunk, TextChunk
from tokenrelay.backends.failover import FailoverBackend
from tokenrelay.backends.openai import OpenAIBackend
from tokenrelay.backends.retry import NO_RETRY
from tokenrelay.config import Settings
from tokenrelay.errors import BackendError
from tokenrelay.messages import Message
from tokenrelay.server import create_app

pytestmark = pytest.mark.anyio

HELLO = [Message.user("Say hello")]
NAMES = ("a", "b", "c")


def answer_of(name: str) -> str:
    return f"{name} says hi"


def pieces_of(name: str) -> list[str]:
    return [f"{name} ", "says ", "hi"]


@pytest.fixture(scope="module")
def fake_servers() -> Iterator[dict[str, FakeOpenAIServer]]:
    servers = {name: FakeOpenAIServer(models=["m"]) for name in NAMES}
    for server in servers.values():
        server.start()
    yield servers
    for server in servers.values():
        server.stop()


@pytest.fixture
def up(fake_servers: dict[str, FakeOpenAIServer]) -> Iterator[dict[str, FakeOpenAIServer]]:
    """The three upstreams, each answering (by default) with its own name."""
    for name, server in fake_servers.items():
        server.reset()
        server.handler = lambda _request, name=name: text_reply(pieces_of(name))
    yield fake_servers
    for server in fake_servers.values():
        server.reset()


COOLDOWN = 2.0  # long enough for a handful of calls on a slow machine


async def wait_healthy(backend: FailoverBackend) -> None:
    """Sleep until every upstream's cooldown is over (no sooner than COOLDOWN allows)."""
    deadline = time.monotonic() + COOLDOWN + 2
    while not all(backend.healthy()):
        assert time.monotonic() < deadline
        await anyio.sleep(0.05)


def refused_url() -> str:
    """A base URL where nothing listens: connecting is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


class Counted:
    """Counts `stream` calls on one upstream (a refused upstream has no server to ask)."""

    def __init__(self, backend: OpenAIBackend) -> None:
        self.calls = 0
        inner = backend.stream

        def stream(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return inner(*args, **kwargs)

        backend.stream = stream  # type: ignore[method-assign]


@pytest.fixture
async def make_failover() -> AsyncIterator[Callable[..., FailoverBackend]]:
    made: list[FailoverBackend] = []

    def make(urls: Sequence[str], *, cooldown_s: float = 10.0, **kwargs: Any) -> FailoverBackend:
        upstreams = [OpenAIBackend("m", base_url=url, api_key="", retry=NO_RETRY, **kwargs) for url in urls]
        backend = FailoverBackend(upstreams, cooldown_s=cooldown_s, retry=NO_RETRY)  # rounds: test_retry.py
        made.append(backend)
        return backend

    yield make
    for backend in made:
        await backend.aclose()


async def collect(backend: FailoverBackend) -> tuple[str, list[ModelChunk]]:
    async with aclosing(backend.stream(HELLO)) as stream:
        chunks = [c async for c in stream]
    assert isinstance(chunks[-1], FinishChunk)
    assert sum(isinstance(c, FinishChunk) for c in chunks) == 1
    return "".join(c.text for c in chunks if isinstance(c, TextChunk)), chunks


async def answer(backend: FailoverBackend) -> str:
    return (await collect(backend))[0]


async def partial_then_error(backend: FailoverBackend) -> tuple[str, BackendError]:
    """The text streamed before the BackendError the call raises."""
    got: list[str] = []
    with pytest.raises(BackendError) as info:
        async with aclosing(backend.stream(HELLO)) as stream:
            async for c in stream:
                if isinstance(c, TextChunk):
                    got.append(c.text)
    return "".join(got), info.value


# -- round robin ----------------------------------------------------------------------------


async def test_round_robin_alternates_between_two_upstreams(
    up: dict[str, FakeOpenAIServer], make_failover: Callable[..., FailoverBackend]
) -> None:
    backend = make_failover([up["a"].base_url, up["b"].base_url])
    answers = [await answer(backend) for _ in range(6)]
    assert answers == [answer_of(n) for n in "ababab"]
    assert len(up["a"].chat_requests) == len(up["b"].chat_requests) == 3
    assert up["a"].last_request.json["model"] == "m"
    assert backend.healthy() == [True, True]


async def test_round_robin_visits_three_upstreams_in_turn(
    up: dict[str, FakeOpenAIServer], make_failover: Callable[..., FailoverBackend]
) -> None:
    backend = make_failover([up[n].base_url for n in NAMES])
    answers = [await answer(backend) for _ in range(6)]
    assert answers == [answer_of(n) for n in "abcabc"]


async def test_concurrent_calls_spread_over_the_upstreams(
    up: dict[str, FakeOpenAIServer], make_failover: Callable[..., FailoverBackend]
) -> None:
    for name in ("a", "b"):
        up[name].handler = lambda _r, name=name: text_reply(pieces_of(name), delay=0.05)
    backend = make_failover([up["a"].base_url, up["b"].base_url])
    results: list[str] = []

    async def one() -> None:
        results.append(await answer(backend))

    async with anyio.create_task_group() as tg:
        for _ in range(8):
            tg.start_soon(one)
    assert sorted(results) == sorted([answer_of("a")] * 4 + [answer_of("b")] * 4)


# -- failover before the first token ---------------------------------------------------------


async def test_a_refused_upstream_is_skipped_cooled_down_then_tried_again(
    up: dict[str, FakeOpenAIServer], make_failover: Callable[..., FailoverBackend]
) -> None:
    backend = make_failover([refused_url(), up["a"].base_url, up["b"].base_url], cooldown_s=COOLDOWN)
    dead = Counted(backend.upstreams[0])  # type: ignore[arg-type]
    # its turn: it refuses, the answer comes whole from the next one
    assert await answer(backend) == answer_of("a")
    assert dead.calls == 1
    assert backend.healthy() == [False, True, True]
    # while it cools down, no call goes near it (its turn included)
    answers = [await answer(backend) for _ in range(6)]
    assert dead.calls == 1
    assert set(answers) == {answer_of("a"), answer_of("b")}
    # after the cooldown it gets its turn again (and, still dead, goes back to cooling down)
    await wait_healthy(backend)
    answers = [await answer(backend) for _ in range(3)]
    assert dead.calls == 2
    assert set(answers) <= {answer_of("a"), answer_of("b")}
    assert backend.healthy()[0] is False


async def test_a_500_upstream_is_skipped_then_used_again_once_it_recovers(
    up: dict[str, FakeOpenAIServer], make_failover: Callable[..., FailoverBackend]
) -> None:
    up["a"].enqueue(error_reply(500, "GPU fell off the bus", type="server_error"))
    backend = make_failover([up["a"].base_url, up["b"].base_url], cooldown_s=COOLDOWN)
    assert await answer(backend) == answer_of("b")
    assert len(up["a"].chat_requests) == 1
    assert backend.healthy() == [False, True]
    assert [await answer(backend) for _ in range(4)] == [answer_of("b")] * 4
    assert len(up["a"].chat_requests) == 1  # cooling down: not asked again
    await wait_healthy(backend)
    answers = [await answer(backend) for _ in range(4)]  # recovered: back in the rotation
    assert answers.count(answer_of("a")) == 2
    assert backend.healthy() == [True, True]


def _role_only_then_drop() -> Reply:
    # headers and the opening role chunk (no content) sent, then the connection breaks
    return Reply(parts=[*text_events([]), Drop()])


def _error_event_first() -> Reply:
    return Reply(parts=[sse({"error": {"message": "model is loading", "code": 503}})])


def _malformed_first() -> Reply:
    return Reply(parts=[b"data: {not json\n\n"])


def _empty_body() -> Reply:
    return Reply(parts=[])


@pytest.mark.parametrize(
    "failure",
    [
        lambda: error_reply(500, "internal error", type="server_error"),
        lambda: error_reply(503, "overloaded", type="server_error"),
        lambda: error_reply(429, "rate limited", type="rate_limit_error"),
        lambda: error_reply(404, "The model `m` does not exist", code="model_not_found"),
        _role_only_then_drop,
        _error_event_first,
        _malformed_first,
        _empty_body,
    ],
    ids=["500", "503", "429", "404", "drop-before-content", "error-event-first", "malformed-first", "empty"],
)
async def test_any_failure_before_the_first_token_fails_over(
    up: dict[str, FakeOpenAIServer],
    make_failover: Callable[..., FailoverBackend],
    failure: Callable[[], Reply],
) -> None:
    up["a"].enqueue(failure())
    backend = make_failover([up["a"].base_url, up["b"].base_url])
    text, chunks = await collect(backend)
    assert text == answer_of("b")  # whole, from b only
    assert [c.text for c in chunks if isinstance(c, TextChunk)] == pieces_of("b")
    assert len(up["a"].chat_requests) == 1 and len(up["b"].chat_requests) == 1
    assert backend.healthy() == [False, True]


async def test_a_stalled_upstream_fails_over_after_the_first_token_timeout(
    up: dict[str, FakeOpenAIServer], make_failover: Callable[..., FailoverBackend]
) -> None:
    up["a"].enqueue(Reply(parts=[Sleep(10), *text_reply(pieces_of("a")).parts]))
    backend = make_failover([up["a"].base_url, up["b"].base_url], first_token_timeout_s=0.3)
    t0 = time.monotonic()
    assert await answer(backend) == answer_of("b")
    assert time.monotonic() - t0 < 3
    assert await up["a"].chat_requests[0].wait_disconnected(2.0)  # a was hung up on


# -- no splicing after the first token --------------------------------------------------------


@pytest.mark.parametrize(
    "tail",
    [
        [Drop()],
        [sse({"error": {"message": "CUDA out of memory", "code": 500}})],
        [b"data: {broken\n\n"],
        [],  # the body just ends: no finish_reason, no [DONE]
    ],
    ids=["drop", "error-event", "malformed", "truncated"],
)
async def test_a_failure_after_the_first_token_is_raised_never_spliced(
    up: dict[str, FakeOpenAIServer], make_failover: Callable[..., FailoverBackend], tail: list[Any]
) -> None:
    up["a"].enqueue(Reply(parts=[*text_events(["a ", "says "]), *tail]))
    backend = make_failover([up["a"].base_url, up["b"].base_url])
    text, error = await partial_then_error(backend)
    assert text == "a says "  # what a sent, nothing from b
    assert "b" not in text.replace("says", "")
    assert up["b"].chat_requests == []  # never asked to finish a's answer
    assert "every upstream failed" not in str(error)
    # the next call goes on with the rotation
    assert await answer(backend) == answer_of("b")


async def test_a_stall_after_the_first_token_is_an_error_not_a_failover(
    up: dict[str, FakeOpenAIServer], make_failover: Callable[..., FailoverBackend]
) -> None:
    up["a"].enqueue(Reply(parts=[*text_events(["a "]), Sleep(10)]))
    backend = make_failover([up["a"].base_url, up["b"].base_url], idle_timeout_s=0.3)
    text, error = await partial_then_error(backend)
    assert text == "a "
    assert "no data from server" in str(error)
    assert up["b"].chat_requests == []


async def test_reasoning_counts_as_the_first_token(
    up: dict[str, FakeOpenAIServer], make_failover: Callable[..., FailoverBackend]
) -> None:
    """Reasoning already shown to the user commits the call as much as answer text does."""
    up["a"].enqueue(Reply(parts=[*text_events([], reasoning=["thinking..."]), Drop()]))
    backend = make_failover([up["a"].base_url, up["b"].base_url])
    text, _ = await partial_then_error(backend)
    assert text == ""
    assert up["b"].chat_requests == []


# -- all down ---------------------------------------------------------------------------------


async def test_all_upstreams_down_is_one_error_naming_each_failure(
    up: dict[str, FakeOpenAIServer], make_failover: Callable[..., FailoverBackend]
) -> None:
    up["a"].enqueue(error_reply(500, "a-is-overloaded", type="server_error"))
    up["b"].enqueue(error_reply(503, "b-is-restarting", type="server_error"))
    dead_url = refused_url()
    backend = make_failover([dead_url, up["a"].base_url, up["b"].base_url])
    dead = Counted(backend.upstreams[0])  # type: ignore[arg-type]
    text, error = await partial_then_error(backend)
    assert text == ""
    message = str(error)
    assert message.startswith("every upstream failed: ")
    assert "\n" not in message
    assert f"cannot reach OpenAI-compatible server at {dead_url}: connection refused" in message
    assert "server error (HTTP 500): a-is-overloaded" in message
    assert "server error (HTTP 503): b-is-restarting" in message
    assert error.retryable
    assert dead.calls == 1 and len(up["a"].chat_requests) == 1 and len(up["b"].chat_requests) == 1
    assert backend.healthy() == [False, False, False]
    # every upstream cooling down: all are tried anyway, and a recovered one answers at once
    assert await answer(backend) == answer_of("a")
    assert dead.calls == 1  # a came first in this call's turn
    assert backend.healthy() == [False, True, False]


async def test_all_down_error_says_which_upstream_gave_which_status(
    up: dict[str, FakeOpenAIServer], make_failover: Callable[..., FailoverBackend]
) -> None:
    up["a"].enqueue(error_reply(500, "overloaded", type="server_error"))
    up["b"].enqueue(error_reply(503, "restarting", type="server_error"))
    backend = make_failover([up["a"].base_url, up["b"].base_url])
    _, error = await partial_then_error(backend)
    assert f"127.0.0.1:{up['a'].port}" in str(error)
    assert f"127.0.0.1:{up['b'].port}" in str(error)


# -- cancellation is not a failure ------------------------------------------------------------


async def test_a_caller_leaving_before_the_first_token_neither_fails_over_nor_cools_down(
    up: dict[str, FakeOpenAIServer], make_failover: Callable[..., FailoverBackend]
) -> None:
    up["a"].enqueue(Reply(parts=[Sleep(10), *text_reply(pieces_of("a")).parts]))
    backend = make_failover([up["a"].base_url, up["b"].base_url])
    with anyio.move_on_after(0.3):
        await answer(backend)
    assert await up["a"].chat_requests[0].wait_disconnected(2.0)
    assert up["b"].chat_requests == []
    assert backend.healthy() == [True, True]


# -- the model string --------------------------------------------------------------------------


async def test_a_base_url_list_builds_a_failover_backend() -> None:
    backend = load_backend("openai:m", Settings(openai_base_url=" http://h1:8000/v1 , http://h2:8000/v1/,"))
    try:
        assert isinstance(backend, FailoverBackend)
        assert [u.base_url for u in backend.upstreams] == ["http://h1:8000/v1", "http://h2:8000/v1"]  # type: ignore[attr-defined]
        assert all(u.model == "m" for u in backend.upstreams)  # type: ignore[attr-defined]
        assert backend.name == "openai:m"
        assert backend.supports_native_tools
    finally:
        await backend.aclose()
    single = load_backend("openai:m", Settings(openai_base_url="http://h1:8000/v1"))
    try:
        assert isinstance(single, OpenAIBackend)
    finally:
        await single.aclose()


# -- end to end through the server -------------------------------------------------------------


@pytest.fixture
def serve_openai(tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    servers: list[LiveServer] = []

    def start(base_urls: str, tool_protocol: Any = "auto") -> LiveServer:
        settings = Settings(
            model="openai:m",
            openai_base_url=base_urls,
            db=f"sqlite:///{tmp_path}/tr.db",
            tool_protocol=tool_protocol,
        )
        server = LiveServer(create_app(settings)).start()  # no backend override: built from settings
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def _sse_events(body: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for frame in body.split("\n\n"):
        name, data = "message", None
        for line in frame.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data = json.loads(line[5:])
        if data is not None:
            events.append((name, data))
    return events


def test_the_server_streams_a_whole_answer_when_the_first_upstream_is_down(
    up: dict[str, FakeOpenAIServer], serve_openai: Callable[..., LiveServer]
) -> None:
    up["a"].handler = lambda _r: text_reply(pieces_of("a"), delay=0.05)
    server = serve_openai(f"{refused_url()},{up['a'].base_url}")
    health = httpx.get(server.url + "/health", timeout=10).json()
    assert health["model"] == "openai:m"
    for _ in range(3):  # whichever upstream's turn it is
        with httpx.stream("POST", server.url + "/chat", json={"text": "hi"}, timeout=30) as response:
            assert response.status_code == 200
            parts = list(response.iter_text())
        assert "".join(parts) == answer_of("a")
    assert len(up["a"].chat_requests) == 3
    assert up["a"].last_request.json["model"] == "m"


def json_action_pieces(name: str) -> list[str]:
    """The JSON protocol's final answer, streamed: the agent relays `action_input` as it comes."""
    return ['{"action": "Final Answer", "action_input": "', *pieces_of(name), '"}']


def test_the_server_alternates_upstreams_and_never_splices_a_broken_answer(
    up: dict[str, FakeOpenAIServer], serve_openai: Callable[..., LiveServer]
) -> None:
    for name in ("a", "b"):
        up[name].handler = lambda _r, name=name: text_reply(json_action_pieces(name))
    server = serve_openai(f"{up['a'].base_url},{up['b'].base_url}", tool_protocol="json")
    outputs = [
        httpx.post(server.url + "/chat", json={"text": "hi", "stream": False}, timeout=30).json()["output"]
        for _ in range(4)
    ]
    assert outputs == [answer_of(n) for n in "abab"]
    # a's turn again: it breaks after streaming part of its answer; the run fails with a's text
    # only, and b is never asked to finish it
    head = json_action_pieces("a")[:3]
    up["a"].enqueue(Reply(parts=[*text_events(head), Drop()]))
    r = httpx.post(server.url + "/chat/events", json={"text": "hi"}, timeout=30)
    events = _sse_events(r.text)
    deltas = "".join(d["text"] for name, d in events if name == "answer_delta")
    assert events[-1][0] == "error"
    assert deltas == "a says "
    assert events[-1][1]["answer"] == "a says "
    assert len(up["b"].chat_requests) == 2
    # the service goes on: next turn is b's
    r = httpx.post(server.url + "/chat", json={"text": "hi", "stream": False}, timeout=30)
    assert r.json()["output"] == answer_of("b")


def test_the_server_reports_every_upstream_down_as_one_error_event(
    up: dict[str, FakeOpenAIServer], serve_openai: Callable[..., LiveServer]
) -> None:
    # the default settings retry a failed round twice (upstream_retries=2): down for all three
    up["a"].enqueue(*[error_reply(503, "a-down", type="server_error") for _ in range(3)])
    server = serve_openai(f"{up['a'].base_url},{refused_url()}")
    r = httpx.post(server.url + "/chat/events", json={"text": "hi"}, timeout=30)
    events = _sse_events(r.text)
    name, data = events[-1]
    assert name == "error"
    assert "every upstream failed" in data["message"]
    assert "a-down" in data["message"] and "connection refused" in data["message"]
    assert data["message"].endswith("(3 attempts)")
    assert len(up["a"].chat_requests) == 3
    assert not any(n == "answer_delta" for n, _ in events)
