"""Upstream retries (backends/retry.py) against a real HTTP server (tests/fake_openai.py).

A call that fails before its first chunk with a retryable error (429, 5xx, connection
refused) is tried again after a backoff that honours Retry-After, at most `attempts` times and
never past `max_total_s`; a call that has produced a chunk is never retried; errors that
retrying cannot fix (400, 401, 404) fail at once. Through the server, with the default
settings, a 429-then-200 upstream gives the user a normal answer.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import aclosing
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import httpx
import pytest

from fake_openai import Drop, FakeOpenAIServer, Reply, error_reply, text_events, text_reply
from server_fixture import LiveServer
from tokenrelay.backends import load_backend
from tokenrelay.backends.base import ModelChunk, TextChunk
from tokenrelay.backends.failover import FailoverBackend
from tokenrelay.backends.openai import OpenAIBackend
from tokenrelay.backends.openai.failures import retry_after as _retry_after
from tokenrelay.backends.retry import NO_RETRY, RetryPolicy
from tokenrelay.config import Settings
from tokenrelay.errors import BackendError, ConfigError
from tokenrelay.messages import Message
from tokenrelay.server import create_app

pytestmark = pytest.mark.anyio

HELLO = [Message.user("Say hello")]
#: fast backoff, so the tests spend their time on what they check
FAST = RetryPolicy(attempts=3, initial_s=0.01, max_backoff_s=0.05, max_total_s=10.0)


@pytest.fixture(scope="module")
def fake_server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as server:
        yield server


@pytest.fixture
def server(fake_server: FakeOpenAIServer) -> Iterator[FakeOpenAIServer]:
    fake_server.reset()
    yield fake_server
    fake_server.reset()


@pytest.fixture
async def make_backend(server: FakeOpenAIServer) -> AsyncIterator[Callable[..., OpenAIBackend]]:
    made: list[OpenAIBackend] = []

    def make(retry: RetryPolicy = FAST, base_url: str | None = None) -> OpenAIBackend:
        backend = OpenAIBackend("m", base_url=base_url or server.base_url, api_key="sk-x", retry=retry)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        await backend.aclose()


async def text_of(backend: OpenAIBackend | FailoverBackend) -> str:
    async with aclosing(backend.stream(HELLO)) as chunks:
        return "".join([c.text async for c in chunks if isinstance(c, TextChunk)])


def rate_limited(retry_after: str | None = None, **headers: str) -> Reply:
    reply = error_reply(429, "Rate limit reached", type="rate_limit_error")
    if retry_after is not None:
        reply.headers["retry-after"] = retry_after
    reply.headers.update(headers)
    return reply


def refused_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


# -- one upstream -------------------------------------------------------------------------


async def test_429_with_retry_after_then_200(
    server: FakeOpenAIServer, make_backend: Callable[..., OpenAIBackend]
) -> None:
    server.enqueue(rate_limited("1"), text_reply(["Hel", "lo"]))
    assert await text_of(make_backend()) == "Hello"
    first, second = server.chat_requests
    assert second.received_at - first.received_at >= 1.0  # Retry-After: 1 was honoured
    assert second.json == first.json  # the same request, sent again


async def test_503_then_200(server: FakeOpenAIServer, make_backend: Callable[..., OpenAIBackend]) -> None:
    server.enqueue(error_reply(503, "loading", type="server_error"), text_reply(["ok"]))
    assert await text_of(make_backend()) == "ok"
    assert len(server.chat_requests) == 2


async def test_a_server_that_always_fails_is_tried_a_bounded_number_of_times(
    server: FakeOpenAIServer, make_backend: Callable[..., OpenAIBackend]
) -> None:
    server.handler = lambda record: error_reply(500, "GPU on fire", type="server_error")
    with pytest.raises(BackendError) as info:
        await text_of(make_backend())
    assert str(info.value) == "server error (HTTP 500): GPU on fire (3 attempts)"
    assert info.value.status == 500 and info.value.retryable
    assert len(server.chat_requests) == 3


async def test_the_time_budget_bounds_the_retries(
    server: FakeOpenAIServer, make_backend: Callable[..., OpenAIBackend]
) -> None:
    server.handler = lambda record: error_reply(503, "busy", type="server_error")
    policy = RetryPolicy(attempts=1000, initial_s=0.05, max_backoff_s=0.1, max_total_s=0.5)
    started = time.monotonic()
    with pytest.raises(BackendError, match=r"busy \(\d+ attempts\)"):
        await text_of(make_backend(policy))
    assert time.monotonic() - started < 0.5 + 10  # bounded (generous: the machine is shared)
    assert 2 <= len(server.chat_requests) < 1000


async def test_a_retry_after_beyond_the_budget_fails_at_once(
    server: FakeOpenAIServer, make_backend: Callable[..., OpenAIBackend]
) -> None:
    server.handler = lambda record: rate_limited("3600")
    with pytest.raises(BackendError) as info:
        await text_of(make_backend())
    assert len(server.chat_requests) == 1
    assert "asked to retry after 3600 s, past the 10 s retry budget" in str(info.value)
    assert info.value.retry_after_s == 3600


@pytest.mark.parametrize(
    "reply",
    [
        error_reply(400, "bad request"),
        error_reply(401, "no key"),
        error_reply(404, "no such model", code="model_not_found"),
    ],
    ids=["400", "401", "404"],
)
async def test_errors_retrying_cannot_fix_fail_at_once(
    server: FakeOpenAIServer, make_backend: Callable[..., OpenAIBackend], reply: Reply
) -> None:
    server.enqueue(reply)
    with pytest.raises(BackendError) as info:
        await text_of(make_backend())
    assert not info.value.retryable
    assert len(server.chat_requests) == 1


async def test_never_retried_after_the_first_token(
    server: FakeOpenAIServer, make_backend: Callable[..., OpenAIBackend]
) -> None:
    server.enqueue(Reply(parts=[*text_events(["partial "]), Drop()]))
    got: list[ModelChunk] = []
    with pytest.raises(BackendError, match="stream ended unexpectedly|broke") as info:
        async with aclosing(make_backend().stream(HELLO)) as chunks:
            async for chunk in chunks:
                got.append(chunk)
    assert info.value.retryable  # retryable in itself, but a chunk was out: not retried
    assert [c.text for c in got if isinstance(c, TextChunk)] == ["partial "]
    assert len(server.chat_requests) == 1


async def test_connection_refused_is_retried(make_backend: Callable[..., OpenAIBackend]) -> None:
    with pytest.raises(BackendError, match=r"connection refused \(3 attempts\)$"):
        await text_of(make_backend(base_url=refused_url()))


async def test_no_retry_policy(server: FakeOpenAIServer, make_backend: Callable[..., OpenAIBackend]) -> None:
    server.enqueue(error_reply(503, "loading", type="server_error"))
    with pytest.raises(BackendError, match=r"^server error \(HTTP 503\): loading$"):
        await text_of(make_backend(NO_RETRY))
    assert len(server.chat_requests) == 1


async def test_cancelling_during_the_backoff_stops_at_once(
    server: FakeOpenAIServer, make_backend: Callable[..., OpenAIBackend]
) -> None:
    server.handler = lambda record: rate_limited("5")
    task = asyncio.create_task(text_of(make_backend(RetryPolicy(attempts=3, max_total_s=60))))
    for _ in range(1000):  # until the first request has been answered
        if server.chat_requests:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)  # now waiting out the Retry-After
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert len(server.chat_requests) == 1


async def test_each_retry_is_logged_without_secrets(
    server: FakeOpenAIServer, make_backend: Callable[..., OpenAIBackend], caplog: pytest.LogCaptureFixture
) -> None:
    server.enqueue(rate_limited("0"), text_reply(["ok"]))
    with caplog.at_level(logging.INFO, logger="tokenrelay.backends"):
        assert await text_of(make_backend()) == "ok"
    [record] = [r for r in caplog.records if "first token" in r.getMessage()]
    assert "HTTP 429" in record.getMessage() and "attempt 2 of 3" in record.getMessage()
    assert "sk-x" not in record.getMessage()


# -- Retry-After ----------------------------------------------------------------------------


def test_retry_after_forms() -> None:
    assert _retry_after(httpx.Headers({"retry-after": "7"})) == 7.0
    assert _retry_after(httpx.Headers({"retry-after": "1.5"})) == 1.5
    assert _retry_after(httpx.Headers({"retry-after-ms": "250", "retry-after": "9"})) == 0.25
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 <= (_retry_after(httpx.Headers({"retry-after": when})) or 0) <= 30
    past = format_datetime(datetime.now(UTC) - timedelta(days=1), usegmt=True)
    assert _retry_after(httpx.Headers({"retry-after": past})) == 0.0
    for junk in ("soon", "", "-", "1e999999", "nan", "Mon, 99 Foo 2024"):
        assert _retry_after(httpx.Headers({"retry-after": junk})) is None, junk
    assert _retry_after(httpx.Headers({})) is None


def test_policy_validation() -> None:
    with pytest.raises(ConfigError):
        RetryPolicy(attempts=0)
    with pytest.raises(ConfigError):
        RetryPolicy(max_total_s=-1)
    with pytest.raises(ConfigError):
        Settings(upstream_retries=-1)


# -- several upstreams ----------------------------------------------------------------------


async def test_failover_retries_whole_rounds(make_backend: Callable[..., OpenAIBackend]) -> None:
    with FakeOpenAIServer() as a, FakeOpenAIServer() as b:
        a.enqueue(error_reply(503, "a down", type="server_error"))
        b.enqueue(rate_limited("0.3"))
        upstreams = [make_backend(NO_RETRY, a.base_url), make_backend(NO_RETRY, b.base_url)]
        backend = FailoverBackend(upstreams, retry=FAST, cooldown_s=0.01)
        assert await text_of(backend) == "Hello!"
        assert len(a.chat_requests) + len(b.chat_requests) == 3  # a, b, then one of them again
        if len(b.chat_requests) == 2:
            assert b.chat_requests[1].received_at - b.chat_requests[0].received_at >= 0.3


async def test_a_round_of_unfixable_errors_is_not_retried(make_backend: Callable[..., OpenAIBackend]) -> None:
    with FakeOpenAIServer() as a, FakeOpenAIServer() as b:
        a.handler = b.handler = lambda record: error_reply(401, "no key")
        backend = FailoverBackend(
            [make_backend(NO_RETRY, a.base_url), make_backend(NO_RETRY, b.base_url)], retry=FAST
        )
        with pytest.raises(BackendError, match="every upstream failed") as info:
            await text_of(backend)
        assert not info.value.retryable
        assert len(a.chat_requests) == len(b.chat_requests) == 1


async def test_the_settings_build_the_policy() -> None:
    single = load_backend("openai:m", Settings(openai_base_url="http://h1/v1", upstream_retry_max_s=7))
    assert isinstance(single, OpenAIBackend)
    assert (single.retry.attempts, single.retry.max_total_s) == (3, 7)
    off = load_backend("openai:m", Settings(openai_base_url="http://h1/v1", upstream_retries=0))
    assert isinstance(off, OpenAIBackend) and off.retry.attempts == 1
    several = load_backend("openai:m", Settings(openai_base_url="http://h1/v1,http://h2/v1"))
    assert isinstance(several, FailoverBackend) and several.retry.attempts == 3
    assert all(isinstance(u, OpenAIBackend) and u.retry.attempts == 1 for u in several.upstreams)


# -- through the server ----------------------------------------------------------------------


def test_the_server_answers_through_a_429_then_200_upstream(tmp_path: Path, server: FakeOpenAIServer) -> None:
    server.enqueue(rate_limited("0.2"), text_reply(["Hello", " there"]))
    settings = Settings(model="openai:m", openai_base_url=server.base_url, db=f"sqlite:///{tmp_path}/t.db")
    with LiveServer(create_app(settings)) as live:
        response = httpx.post(live.url + "/chat", json={"text": "hi"}, timeout=30)
    assert response.status_code == 200 and response.text == "Hello there"
    assert len(server.chat_requests) == 2
