"""OpenAIBackend against a real HTTP server (tests/fake_openai.py) over a real socket."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import aclosing
from typing import Any

import anyio
import httpx
import pytest

from fake_openai import (
    DONE,
    Drop,
    FakeOpenAIServer,
    RecordedRequest,
    Reply,
    Sleep,
    chunk,
    error_reply,
    json_reply,
    split_bytes,
    sse,
    text_events,
    text_reply,
    tool_call_reply,
)
from tokenrelay.backends.base import (
    FinishChunk,
    GenerationSettings,
    ModelChunk,
    TextChunk,
    ThinkingChunk,
    ToolCallChunk,
)
from tokenrelay.backends.openai import OpenAIBackend
from tokenrelay.backends.retry import NO_RETRY
from tokenrelay.errors import BackendError, ConfigError
from tokenrelay.events import Usage
from tokenrelay.messages import Message, ToolCall, ToolSpec

pytestmark = pytest.mark.anyio

KEY = "sk-test-SECRET-0123456789"
HELLO = [Message.user("Say hello")]


@pytest.fixture(scope="module")
def fake_server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(models=["fake-model", "other-model"]) as server:
        yield server


@pytest.fixture
def server(fake_server: FakeOpenAIServer) -> Iterator[FakeOpenAIServer]:
    fake_server.reset()
    yield fake_server
    fake_server.reset()


@pytest.fixture
async def make_backend(server: FakeOpenAIServer) -> AsyncIterator[Callable[..., OpenAIBackend]]:
    made: list[OpenAIBackend] = []

    def make(**kwargs: Any) -> OpenAIBackend:
        kwargs.setdefault("base_url", server.base_url)
        kwargs.setdefault("api_key", KEY)
        kwargs.setdefault("retry", NO_RETRY)  # one request, one outcome (retries: test_retry.py)
        backend = OpenAIBackend(kwargs.pop("model", "fake-model"), **kwargs)
        made.append(backend)
        return backend

    yield make
    for backend in made:
        await backend.aclose()


@pytest.fixture
def backend(make_backend: Callable[..., OpenAIBackend]) -> OpenAIBackend:
    return make_backend()


async def collect(
    backend: OpenAIBackend,
    messages: Sequence[Message] = HELLO,
    *,
    tools: Sequence[ToolSpec] | None = None,
    settings: GenerationSettings = GenerationSettings(),
) -> list[ModelChunk]:
    async with aclosing(backend.stream(messages, tools=tools, settings=settings)) as stream:
        return [c async for c in stream]


def texts(chunks: Sequence[ModelChunk]) -> list[str]:
    return [c.text for c in chunks if isinstance(c, TextChunk)]


async def stream_error(backend: OpenAIBackend, *, before: int = 0) -> BackendError:
    """The BackendError the stream raises, after exactly `before` chunks."""
    got: list[ModelChunk] = []
    with pytest.raises(BackendError) as info:
        async with aclosing(backend.stream(HELLO)) as stream:
            async for c in stream:
                got.append(c)
    assert len(got) == before, got
    message = str(info.value)
    assert KEY not in message
    assert "\n" not in message
    return info.value


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- streaming ----------------------------------------------------------------------------


async def test_text_streams_in_order_and_incrementally(
    server: FakeOpenAIServer, backend: OpenAIBackend
) -> None:
    pieces = ["Hel", "lo", ", wor", "ld!"]
    server.enqueue(text_reply(pieces, delay=0.15, usage=(7, 4)))
    got: list[ModelChunk] = []
    async with aclosing(backend.stream(HELLO)) as stream:
        async for c in stream:
            if not got:
                request = server.last_request
                # the first chunk is here while the server still has most of the reply to send
                assert not request.completed.is_set()
                assert request.parts_sent <= 3
            got.append(c)
    assert texts(got) == pieces
    assert got[-1] == FinishChunk("stop", Usage(prompt_tokens=7, completion_tokens=4))
    assert sum(isinstance(c, FinishChunk) for c in got) == 1
    assert server.last_request.completed.is_set()
    assert not server.last_request.disconnected.is_set()


async def test_request_body_and_headers(server: FakeOpenAIServer, backend: OpenAIBackend) -> None:
    schema = {"type": "object", "properties": {"action": {"type": "string"}}, "required": ["action"]}
    messages = [
        Message.system("Be brief."),
        Message.user("Weather in Paris?"),
        Message.assistant("", (ToolCall(id="call_1", name="weather", arguments='{"city":"Paris"}'),)),
        Message(role="tool", content="18°C", tool_call_id="call_1"),
    ]
    tool = ToolSpec(name="weather", description="Current weather", parameters={"type": "object"})
    settings = GenerationSettings(
        max_tokens=64,
        temperature=0.2,
        top_p=0.9,
        stop=("\nObservation:",),
        seed=42,
        json_schema=schema,
        grammar="root ::= x",
    )
    await collect(backend, messages, tools=[tool], settings=settings)
    request = server.last_request
    assert request.method == "POST"
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["content-type"] == "application/json"
    assert "text/event-stream" in request.headers["accept"]
    body = request.json
    assert body["model"] == "fake-model"
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["messages"] == [m.to_openai() for m in messages]
    assert body["messages"][3]["content"] == "18°C"
    assert body["max_tokens"] == 64
    assert body["temperature"] == 0.2
    assert body["top_p"] == 0.9
    assert body["stop"] == ["\nObservation:"]
    assert body["seed"] == 42
    assert body["tools"] == [tool.to_openai()]
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "action", "schema": schema, "strict": False},
    }
    assert "grammar" not in json.dumps(body)


async def test_request_body_omits_unset_options_and_merges_extra_body(
    server: FakeOpenAIServer, make_backend: Callable[..., OpenAIBackend]
) -> None:
    await collect(make_backend())
    body = server.last_request.json
    for key in ("stop", "seed", "tools", "response_format"):
        assert key not in body
    assert body["max_tokens"] == 2048

    backend = make_backend(extra_body={"top_k": 40, "max_tokens": None, "max_completion_tokens": 99})
    await collect(backend, settings=GenerationSettings(max_tokens=None))
    body = server.last_request.json
    assert body["top_k"] == 40
    assert "max_tokens" not in body
    assert body["max_completion_tokens"] == 99


async def test_no_authorization_header_without_a_key(
    server: FakeOpenAIServer, make_backend: Callable[..., OpenAIBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    await collect(make_backend(api_key=None))
    assert "authorization" not in server.last_request.headers

    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    await collect(make_backend(api_key=""))  # "" means: no key, even if the variable is set
    assert "authorization" not in server.last_request.headers


async def test_base_url_and_key_default_to_the_environment(
    server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url + "/")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    backend = OpenAIBackend("env-model")
    try:
        assert backend.name == "openai:env-model"
        assert backend.base_url == server.base_url
        assert texts(await collect(backend)) == ["Hello", "!"]
    finally:
        await backend.aclose()
    assert server.last_request.headers["authorization"] == "Bearer sk-from-env"
    assert server.last_request.json["model"] == "env-model"
    assert "sk-from-env" not in repr(backend)

    monkeypatch.delenv("OPENAI_BASE_URL")
    assert OpenAIBackend("m").base_url == "https://api.openai.com/v1"


def test_backend_attributes_and_config_errors() -> None:
    backend = OpenAIBackend("gpt-x", base_url="http://localhost:1/v1", api_key=KEY)
    assert backend.name == "openai:gpt-x"
    assert backend.supports_native_tools is True
    assert backend.enforces_json_schema is False
    assert backend.count_tokens("abcdefgh") == 2
    assert KEY not in repr(backend)
    with pytest.raises(ConfigError):
        OpenAIBackend("m", base_url="localhost:8000/v1")
    with pytest.raises(ConfigError):
        OpenAIBackend("m", base_url="http://")
    with pytest.raises(ConfigError):
        OpenAIBackend("m", base_url="http://x/v1", idle_timeout_s=0)
    with pytest.raises(ConfigError):
        OpenAIBackend("", base_url="http://x/v1")


async def test_tool_call_fragments(server: FakeOpenAIServer, backend: OpenAIBackend) -> None:
    server.enqueue(
        tool_call_reply(
            [("call_a", "weather", ['{"ci', 'ty": "Pa', 'ris"}']), ("call_b", "clock", ["{}"])],
            text=["Let me check."],
            usage=(20, 9),
        )
    )
    got = await collect(backend, tools=[ToolSpec(name="weather", description="w")])
    assert texts(got) == ["Let me check."]
    calls = [c for c in got if isinstance(c, ToolCallChunk)]
    assert calls[0] == ToolCallChunk(index=0, id="call_a", name="weather", arguments="")
    assert [c.arguments for c in calls[1:4]] == ['{"ci', 'ty": "Pa', 'ris"}']
    assert all(c.id is None and c.name is None for c in calls[1:4])
    assert calls[4] == ToolCallChunk(index=1, id="call_b", name="clock", arguments="")
    assert calls[5] == ToolCallChunk(index=1, arguments="{}")
    args = "".join(c.arguments for c in calls if c.index == 0)
    assert json.loads(args) == {"city": "Paris"}
    assert got[-1] == FinishChunk("tool_calls", Usage(prompt_tokens=20, completion_tokens=9))


async def test_tool_calls_from_lenient_servers(server: FakeOpenAIServer, backend: OpenAIBackend) -> None:
    # whole calls without `index`, arguments as an object, id/name repeated on every
    # fragment, and finish_reason "stop" (older Ollama, some vLLM and llama-server versions)
    server.enqueue(
        Reply(
            parts=[
                sse(chunk({"tool_calls": [{"id": "c1", "function": {"name": "a", "arguments": {"x": 1}}}]})),
                sse(
                    chunk(
                        {
                            "tool_calls": [
                                {"index": 1, "id": "c2", "function": {"name": "b", "arguments": "{"}}
                            ]
                        }
                    )
                ),
                sse(
                    chunk(
                        {
                            "tool_calls": [
                                {"index": 1, "id": "c2", "function": {"name": "b", "arguments": "}"}}
                            ]
                        }
                    )
                ),
                sse(chunk(finish_reason="stop")),
                DONE,
            ]
        )
    )
    assert await collect(backend) == [
        ToolCallChunk(index=0, id="c1", name="a", arguments='{"x": 1}'),
        ToolCallChunk(index=1, id="c2", name="b", arguments="{"),
        ToolCallChunk(index=1, arguments="}"),
        FinishChunk("tool_calls"),
    ]


async def test_concurrent_streams_share_the_client_and_stay_apart(
    server: FakeOpenAIServer, backend: OpenAIBackend
) -> None:
    def echo(request: RecordedRequest) -> Reply:
        prompt = request.json["messages"][-1]["content"]
        return text_reply([prompt[:3], prompt[3:]], delay=0.02)

    server.handler = echo
    results: dict[str, str] = {}

    async def run(prompt: str) -> None:
        results[prompt] = "".join(texts(await collect(backend, [Message.user(prompt)])))

    async with anyio.create_task_group() as tg:
        for i in range(8):
            tg.start_soon(run, f"prompt-{i}")
    assert results == {f"prompt-{i}": f"prompt-{i}" for i in range(8)}
    # no stream left open: the server's side of each reply ends too (it may still be leaving
    # its handler when the client has read [DONE] and returned)
    with anyio.fail_after(2):
        while server.active:  # noqa: ASYNC110 - a counter of the fake server, no event to wait on
            await anyio.sleep(0.01)


async def test_reasoning_content_and_reasoning(server: FakeOpenAIServer, backend: OpenAIBackend) -> None:
    server.enqueue(text_reply(["42"], reasoning=["Let me", " think."], usage=(3, 5)))
    got = await collect(backend)
    assert got == [
        ThinkingChunk("Let me"),
        ThinkingChunk(" think."),
        TextChunk("42"),
        FinishChunk("stop", Usage(prompt_tokens=3, completion_tokens=5)),
    ]

    # the `reasoning` spelling (OpenRouter, newer vLLM); usage on the finish chunk (llama-server)
    server.enqueue(
        Reply(
            parts=[
                sse(chunk({"reasoning": "hmm"})),
                sse(chunk({"content": "ok"})),
                sse(chunk(finish_reason="length", usage=(1, 2))),
                DONE,
            ]
        )
    )
    got = await collect(backend)
    assert got == [
        ThinkingChunk("hmm"),
        TextChunk("ok"),
        FinishChunk("length", Usage(prompt_tokens=1, completion_tokens=2)),
    ]


async def test_no_usage_chunk_gives_no_usage(server: FakeOpenAIServer, backend: OpenAIBackend) -> None:
    server.enqueue(text_reply(["a"]))
    assert (await collect(backend))[-1] == FinishChunk("stop", None)


async def test_multibyte_characters_split_across_network_chunks(
    server: FakeOpenAIServer, backend: OpenAIBackend
) -> None:
    answer = "日本語です😀🎉"
    event = sse(chunk({"content": answer}))
    start = event.index(answer.encode())
    # cut inside 日 (3 bytes), inside 語, and twice inside 😀 (4 bytes)
    cuts = [start + 1, start + 7, start + 16, start + 18]
    for cut in cuts:
        with pytest.raises(UnicodeDecodeError):
            event[:cut].decode("utf-8")
    parts = [*text_events(["前"]), *split_bytes(event, *cuts), sse(chunk(finish_reason="stop")), DONE]
    reply = Reply(parts=parts, delay=0.05)

    # the cuts really reach the client as separate network reads
    server.enqueue(reply)
    async with (
        httpx.AsyncClient() as client,
        client.stream("POST", server.base_url + "/chat/completions", json={}) as response,
    ):
        raw = [piece async for piece in response.aiter_raw()]
    assert any(piece.startswith(split_bytes(event, *cuts)[2]) for piece in raw)
    split_mid_char = 0
    for piece in raw:
        try:
            piece.decode("utf-8")
        except UnicodeDecodeError:
            split_mid_char += 1
    assert split_mid_char >= 3

    server.enqueue(reply)
    got = await collect(backend)
    assert texts(got) == ["前", answer]
    assert all("\ufffd" not in t for t in texts(got))


async def test_sse_framing_comments_fields_crlf_multiline_and_bom(
    server: FakeOpenAIServer, backend: OpenAIBackend
) -> None:
    body = (
        "\ufeffevent: message\r\nid: 1\r\nretry: 100\r\n"
        'data: {"choices": [{"index": 0,\r\ndata:  "delta": {"content": "a"}}]}\r\n\r\n'
        ": keep-alive comment\r\n\r\n"
        ": ping\n\n"
        'data:{"choices":[{"index":0,"delta":{"content":"b"},"finish_reason":"stop"}]}\n\n'
        "data: [DONE]\n\n"
    ).encode()
    server.enqueue(Reply(parts=split_bytes(body, 5, 40, 90), delay=0.01))
    got = await collect(backend)
    assert got == [TextChunk("a"), TextChunk("b"), FinishChunk("stop")]


async def test_cr_only_line_ends_are_line_ends(server: FakeOpenAIServer, backend: OpenAIBackend) -> None:
    """The backend reads SSE with `tokenrelay.sse`, the one decoder: a bare CR ends a line too."""
    body = (
        b'data: {"choices":[{"index":0,"delta":{"content":"a"}}]}\r\r'
        b'data: {"choices":[{"index":0,"delta":{"content":"b"},"finish_reason":"stop"}]}\r\r'
        b"data: [DONE]\r\r"
    )
    server.enqueue(Reply(parts=split_bytes(body, 3, 60), delay=0.01))
    assert await collect(backend) == [TextChunk("a"), TextChunk("b"), FinishChunk("stop")]


async def test_finish_reason_without_done_is_accepted(
    server: FakeOpenAIServer, backend: OpenAIBackend
) -> None:
    server.enqueue(Reply(parts=[*text_events(["x"]), sse(chunk(finish_reason="stop")).rstrip(b"\n")]))
    assert await collect(backend) == [TextChunk("x"), FinishChunk("stop")]


async def test_non_streamed_json_completion_is_accepted(
    server: FakeOpenAIServer, backend: OpenAIBackend
) -> None:
    completion = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "whole"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3},
    }
    server.enqueue(json_reply(completion))
    assert await collect(backend) == [
        TextChunk("whole"),
        FinishChunk("stop", Usage(prompt_tokens=2, completion_tokens=1)),
    ]


async def test_keep_alive_connection_is_reused(server: FakeOpenAIServer, backend: OpenAIBackend) -> None:
    await collect(backend)
    await collect(backend)
    first, second = server.chat_requests
    assert first.client == second.client


# -- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "expected", "retryable"),
    [
        (
            error_reply(401, f"Incorrect API key provided: {KEY}"),
            "the server rejected the API key (HTTP 401)",
            False,
        ),
        (error_reply(403, f"Key {KEY} lacks access"), "the server rejected the API key (HTTP 403)", False),
        (
            error_reply(404, "The model `fake-model` does not exist", code="model_not_found"),
            "model 'fake-model' not found (HTTP 404): The model `fake-model` does not exist",
            False,
        ),
        (
            error_reply(429, "Rate limit reached\nfor requests", type="rate_limit"),
            "rate limited by the server (HTTP 429): Rate limit reached for requests",
            True,
        ),
        (error_reply(500, f"boom for key {KEY}"), "server error (HTTP 500): boom for key ***", True),
        (
            Reply(status=503, parts=[b"upstream overloaded"], content_type="text/plain"),
            "server error (HTTP 503): upstream overloaded",
            True,
        ),
        (
            json_reply({"detail": "bad temperature"}, status=422),
            "the server rejected the request (HTTP 422): bad temperature",
            False,
        ),
    ],
)
async def test_status_errors_raise_on_first_iteration(
    server: FakeOpenAIServer, backend: OpenAIBackend, reply: Reply, expected: str, retryable: bool
) -> None:
    server.enqueue(reply)
    stream = backend.stream(HELLO)
    with pytest.raises(BackendError) as info:
        await stream.__anext__()
    await stream.aclose()
    assert str(info.value) == expected
    assert info.value.status == reply.status
    assert info.value.retryable is retryable
    assert KEY not in str(info.value)


async def test_401_without_a_key_says_a_key_is_needed(
    server: FakeOpenAIServer, make_backend: Callable[..., OpenAIBackend]
) -> None:
    server.enqueue(error_reply(401, "missing key"))
    error = await stream_error(make_backend(api_key=""))
    assert str(error) == "the server requires an API key (HTTP 401); set OPENAI_API_KEY"


async def test_404_without_json_message_points_at_the_base_url(
    server: FakeOpenAIServer, backend: OpenAIBackend
) -> None:
    server.enqueue(Reply(status=404, parts=[b"404 page not found"], content_type="text/plain"))
    error = await stream_error(backend)
    assert str(error) == (
        f"HTTP 404 from {server.base_url}: check the base URL and the model name 'fake-model': "
        "404 page not found"
    )
    assert error.status == 404


@pytest.mark.parametrize(
    "bad",
    [
        b"data: {not json\n\n",
        b'data: {"choices": 5}\n\n',
        b"data: [1, 2]\n\n",
        b'data: {"choices": [{"delta": {"content": 7}}]}\n\n',
    ],
)
async def test_malformed_chunk(server: FakeOpenAIServer, backend: OpenAIBackend, bad: bytes) -> None:
    server.enqueue(Reply(parts=[*text_events(["ok"]), bad, DONE]))
    error = await stream_error(backend, before=1)
    assert str(error) == "malformed stream chunk from server: " + bad.decode()[6:].strip()


async def test_connection_dropped_mid_stream(server: FakeOpenAIServer, backend: OpenAIBackend) -> None:
    server.enqueue(Reply(parts=[*text_events(["partial"]), Drop()]))
    error = await stream_error(backend, before=1)
    assert str(error).startswith("stream ended unexpectedly")
    assert error.retryable


async def test_body_ending_without_done_or_finish_reason(
    server: FakeOpenAIServer, backend: OpenAIBackend
) -> None:
    server.enqueue(Reply(parts=text_events(["partial"])))
    error = await stream_error(backend, before=1)
    assert str(error).startswith("stream ended unexpectedly")
    assert error.retryable


async def test_connection_dropped_after_finish_reason_still_finishes(
    server: FakeOpenAIServer, backend: OpenAIBackend
) -> None:
    server.enqueue(Reply(parts=[*text_events(["all"]), sse(chunk(finish_reason="length")), Drop()]))
    assert await collect(backend) == [TextChunk("all"), FinishChunk("length")]


async def test_error_object_inside_the_stream(server: FakeOpenAIServer, backend: OpenAIBackend) -> None:
    server.enqueue(
        Reply(
            parts=[
                *text_events(["a"]),
                sse({"error": {"message": f"CUDA out of memory ({KEY})", "code": 500}}),
            ]
        )
    )
    error = await stream_error(backend, before=1)
    assert str(error) == "the server reported an error mid-stream: CUDA out of memory (***)"
    assert error.status == 500
    assert error.retryable


async def test_idle_timeout(server: FakeOpenAIServer, make_backend: Callable[..., OpenAIBackend]) -> None:
    server.enqueue(Reply(parts=[*text_events(["a"]), Sleep(10), *text_events(["b"]), DONE]))
    backend = make_backend(idle_timeout_s=0.3)
    start = time.monotonic()
    error = await stream_error(backend, before=1)
    assert str(error) == "no data from server for 0.3 s"
    assert error.retryable
    assert time.monotonic() - start < 2
    assert await server.last_request.wait_disconnected(1.0)


async def test_read_timeout_from_timeout_s(
    server: FakeOpenAIServer, make_backend: Callable[..., OpenAIBackend]
) -> None:
    server.enqueue(Reply(parts=[Sleep(10), DONE]))
    error = await stream_error(make_backend(timeout_s=0.3))
    assert str(error) == "no data from server for 0.3 s"


async def test_first_token_timeout(
    server: FakeOpenAIServer, make_backend: Callable[..., OpenAIBackend]
) -> None:
    server.enqueue(Reply(parts=[sse(chunk({"role": "assistant"})), Sleep(10), DONE]))
    start = time.monotonic()
    error = await stream_error(make_backend(first_token_timeout_s=0.3))
    assert str(error) == "no first token from server within 0.3 s"
    assert time.monotonic() - start < 2


async def test_keep_alive_comments_do_not_extend_the_first_token_deadline(
    server: FakeOpenAIServer, make_backend: Callable[..., OpenAIBackend]
) -> None:
    server.enqueue(Reply(parts=[b": ping\n\n"] * 50, delay=0.05))
    start = time.monotonic()
    error = await stream_error(make_backend(first_token_timeout_s=0.4))
    assert str(error) == "no first token from server within 0.4 s"
    assert time.monotonic() - start < 1.5


async def test_slow_prompt_then_idle_timeout(
    server: FakeOpenAIServer, make_backend: Callable[..., OpenAIBackend]
) -> None:
    # a first token after 0.6 s is fine (first_token_timeout_s=5); later silences are not
    server.enqueue(Reply(parts=[Sleep(0.6), *text_events(["a"]), Sleep(10), DONE]))
    error = await stream_error(make_backend(first_token_timeout_s=5, idle_timeout_s=0.3), before=1)
    assert str(error) == "no data from server for 0.3 s"


async def test_slow_consumer_is_not_timed_out(
    server: FakeOpenAIServer, make_backend: Callable[..., OpenAIBackend]
) -> None:
    # timeouts cover network reads only, never the time the consumer spends between chunks
    server.enqueue(text_reply(["a", "b", "c"]))
    backend = make_backend(idle_timeout_s=0.1, first_token_timeout_s=0.2)
    got = []
    async with aclosing(backend.stream(HELLO)) as stream:
        async for c in stream:
            got.append(c)
            await anyio.sleep(0.3)
    assert texts(got) == ["a", "b", "c"]


async def test_connection_refused(make_backend: Callable[..., OpenAIBackend]) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    error = await stream_error(make_backend(base_url=url))
    assert str(error) == f"cannot reach OpenAI-compatible server at {url}: connection refused"
    assert error.retryable


async def test_unresolvable_host(make_backend: Callable[..., OpenAIBackend]) -> None:
    error = await stream_error(
        make_backend(base_url="http://user:pw@no-such-host.invalid/v1?key=x", timeout_s=10)
    )
    # the one URL redaction (tokenrelay._redact): the user name stays, the password and query go
    shown = "http://user:***@no-such-host.invalid/v1"
    assert str(error).startswith(f"cannot reach OpenAI-compatible server at {shown}: ")
    assert "pw" not in str(error) and "key=x" not in str(error)


# -- cancellation -------------------------------------------------------------------------


async def test_consumer_closing_the_stream_disconnects_the_server(
    server: FakeOpenAIServer, backend: OpenAIBackend
) -> None:
    server.enqueue(text_reply([f"t{i} " for i in range(50)], delay=0.1))
    async with aclosing(backend.stream(HELLO)) as stream:
        async for _ in stream:
            break
    request = server.last_request
    assert await request.wait_disconnected(1.0)
    assert not request.completed.is_set()
    assert request.parts_sent < 10


async def test_consumer_breaking_out_disconnects_the_server(
    server: FakeOpenAIServer, backend: OpenAIBackend
) -> None:
    server.enqueue(text_reply([f"t{i} " for i in range(50)], delay=0.1))
    async for _ in backend.stream(HELLO):  # no aclose: the generator is finalized when dropped
        break
    assert await server.last_request.wait_disconnected(1.0)


async def test_cancelled_task_disconnects_the_server(
    server: FakeOpenAIServer, backend: OpenAIBackend
) -> None:
    server.enqueue(Reply(parts=[*text_events(["first"]), Sleep(30), DONE]))
    got: list[ModelChunk] = []

    async def consume() -> None:
        async for c in backend.stream(HELLO):
            got.append(c)

    with anyio.move_on_after(0.5):
        await consume()
    assert texts(got) == ["first"]
    request = server.last_request
    assert await request.wait_disconnected(1.0)
    assert request.disconnected_at is not None


# -- models -------------------------------------------------------------------------------


async def test_list_models(server: FakeOpenAIServer, backend: OpenAIBackend) -> None:
    assert await backend.list_models() == ["fake-model", "other-model"]
    assert server.last_request.path == "/v1/models"
    assert server.last_request.headers["authorization"] == f"Bearer {KEY}"


async def test_list_models_errors(
    server: FakeOpenAIServer, make_backend: Callable[..., OpenAIBackend]
) -> None:
    server.enqueue(error_reply(401, f"bad key {KEY}"), path="/models")
    with pytest.raises(BackendError, match=r"^the server rejected the API key \(HTTP 401\)$"):
        await make_backend().list_models()
    server.enqueue(json_reply({"nope": 1}), path="/models")
    with pytest.raises(BackendError, match="^malformed model list from server"):
        await make_backend().list_models()
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(BackendError, match="connection refused$"):
        await make_backend(base_url=url).list_models()
