"""A scriptable fake OpenAI-compatible server for tests: real HTTP over a real socket.

`FakeOpenAIServer` is a Starlette app served by uvicorn (h11) in a background thread on a
free port of 127.0.0.1. Each test scripts what the server answers, request by request, and
afterwards inspects what the server received and saw:

    with FakeOpenAIServer() as server:                      # or the fixture in a test module
        server.enqueue(text_reply(["Hel", "lo"], delay=0.05, usage=(12, 2)))
        backend = OpenAIBackend("fake-model", base_url=server.base_url, api_key="sk-test")
        ...
        request = server.requests[-1]
        request.json["messages"], request.headers.get("authorization"), request.disconnected

A reply (`Reply`) is a status, a content type and a list of body parts sent one by one:
`bytes` (written as they are: one ASGI body message each, so a cut between two parts is a
cut between two network writes), `Sleep(seconds)` (a stall: nothing is sent), or `Drop()`
(the connection is closed at once, without ending the chunked body and without [DONE]).
`Reply.delay` pauses between consecutive parts. Builders cover the common cases:
`text_reply`, `tool_call_reply`, `error_reply`, `json_reply`, plus `sse`, `chunk`,
`text_events` and `DONE` to compose anything else (a malformed chunk, an in-stream error,
bytes cut inside a UTF-8 character with `split_bytes`...).

Replies are taken per path (relative to `/v1`) from a queue filled by `enqueue`; when the
queue is empty, `handler(request)` decides (it may look at the recorded request, e.g. to
echo the prompt), else the default: `text_reply(["Hello", "!"])` for `/chat/completions`
and a model list for `/models`. Any other path answers 404 with an OpenAI-style error.

Every request is recorded (`RecordedRequest`): method, path, lower-cased headers, body (and
`.json`), the client's address (same port twice = a reused keep-alive connection), how many
parts were sent, and two `threading.Event`s: `completed` (the whole reply was sent) and
`disconnected` (the client went away before that: what a test asserts to prove that
cancellation reached the server; `await request.wait_disconnected(1.0)`).
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio.to_thread
import uvicorn
from starlette.applications import Starlette
from starlette.routing import BaseRoute, Route
from starlette.types import Message, Receive, Scope, Send

__all__ = [
    "DONE",
    "Drop",
    "FakeOpenAIServer",
    "RecordedRequest",
    "Reply",
    "Sleep",
    "chunk",
    "error_reply",
    "json_reply",
    "split_bytes",
    "sse",
    "text_events",
    "text_reply",
    "tool_call_reply",
]

DEFAULT_MODEL = "fake-model"


# -- scripts ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sleep:
    """Send nothing for `seconds` (ends early if the client disconnects or the server stops)."""

    seconds: float


@dataclass(frozen=True)
class Drop:
    """Close the connection now: the chunked body never ends, no [DONE] follows."""


Part = bytes | Sleep | Drop


@dataclass
class Reply:
    """One scripted HTTP response."""

    status: int = 200
    parts: Sequence[Part] = ()
    content_type: str = "text/event-stream"
    headers: dict[str, str] = field(default_factory=dict)
    #: seconds to wait between two consecutive body parts (not before the first)
    delay: float = 0.0


DONE = b"data: [DONE]\n\n"


def sse(data: Any) -> bytes:
    """One SSE event: `data: <json>` (or the string itself), then a blank line. UTF-8, raw."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return b"data: " + text.encode("utf-8") + b"\n\n"


def chunk(
    delta: dict[str, Any] | None = None,
    *,
    finish_reason: str | None = None,
    usage: tuple[int, int] | None = None,
    model: str = DEFAULT_MODEL,
    choices: bool = True,
) -> dict[str, Any]:
    """A `chat.completion.chunk` object as OpenAI streams it (`choices=False`: the usage chunk)."""
    obj: dict[str, Any] = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": model,
        "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish_reason}] if choices else [],
    }
    if usage is not None:
        obj["usage"] = {
            "prompt_tokens": usage[0],
            "completion_tokens": usage[1],
            "total_tokens": usage[0] + usage[1],
        }
    return obj


def text_events(
    chunks: Iterable[str], *, reasoning: Iterable[str] = (), model: str = DEFAULT_MODEL
) -> list[bytes]:
    """The opening role chunk, the reasoning chunks (`reasoning_content`), then the text chunks."""
    parts = [sse(chunk({"role": "assistant", "content": ""}, model=model))]
    parts += [sse(chunk({"reasoning_content": piece}, model=model)) for piece in reasoning]
    parts += [sse(chunk({"content": piece}, model=model)) for piece in chunks]
    return parts


def _ending(finish_reason: str | None, usage: tuple[int, int] | None, done: bool, model: str) -> list[bytes]:
    parts = []
    if finish_reason is not None:
        parts.append(sse(chunk(finish_reason=finish_reason, model=model)))
    if usage is not None:
        parts.append(sse(chunk(usage=usage, model=model, choices=False)))
    if done:
        parts.append(DONE)
    return parts


def text_reply(
    chunks: Iterable[str],
    *,
    delay: float = 0.0,
    reasoning: Iterable[str] = (),
    finish_reason: str | None = "stop",
    usage: tuple[int, int] | None = None,
    done: bool = True,
    model: str = DEFAULT_MODEL,
) -> Reply:
    """A streamed answer: one event per chunk, `delay` seconds apart, then finish/usage/[DONE]."""
    parts = text_events(chunks, reasoning=reasoning, model=model)
    return Reply(parts=parts + _ending(finish_reason, usage, done, model), delay=delay)


def tool_call_reply(
    calls: Sequence[tuple[str, str, Sequence[str]]],
    *,
    text: Iterable[str] = (),
    delay: float = 0.0,
    usage: tuple[int, int] | None = None,
    model: str = DEFAULT_MODEL,
) -> Reply:
    """Native tool calls streamed as OpenAI does: per call `(id, name, argument_fragments)`,
    one event with the id and name, then one event per fragment of the JSON arguments."""
    parts = text_events(text, model=model)
    for index, (call_id, name, fragments) in enumerate(calls):
        head = {
            "index": index,
            "id": call_id,
            "type": "function",
            "function": {"name": name, "arguments": ""},
        }
        parts.append(sse(chunk({"tool_calls": [head]}, model=model)))
        for fragment in fragments:
            piece = {"index": index, "function": {"arguments": fragment}}
            parts.append(sse(chunk({"tool_calls": [piece]}, model=model)))
    return Reply(parts=parts + _ending("tool_calls", usage, True, model), delay=delay)


def json_reply(obj: Any, *, status: int = 200) -> Reply:
    """A plain JSON response (sent with a Content-Length)."""
    return Reply(status=status, parts=[json.dumps(obj).encode()], content_type="application/json")


def error_reply(
    status: int, message: str, *, type: str = "invalid_request_error", code: str | int | None = None
) -> Reply:
    """An OpenAI-style error: `{"error": {"message", "type", "param", "code"}}`."""
    return json_reply(
        {"error": {"message": message, "type": type, "param": None, "code": code}}, status=status
    )


def split_bytes(data: bytes, *cuts: int) -> list[bytes]:
    """`data` cut at the given byte offsets (e.g. inside a multi-byte UTF-8 character)."""
    bounds = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


# -- records ------------------------------------------------------------------------------


@dataclass
class RecordedRequest:
    """What the server received for one request, and how the reply went."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    client: tuple[str, int] | None
    received_at: float = field(default_factory=time.monotonic)
    #: body parts sent so far (see `Reply.parts`)
    parts_sent: int = 0
    #: `time.monotonic()` when each part was handed to the server, in order
    sent_at: list[float] = field(default_factory=list)
    #: set once the whole reply was sent
    completed: threading.Event = field(default_factory=threading.Event)
    #: set when the client disconnected before the reply was complete
    disconnected: threading.Event = field(default_factory=threading.Event)
    disconnected_at: float | None = None
    #: the script closed the connection (`Drop`)
    dropped: bool = False

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    async def wait_disconnected(self, seconds: float = 1.0) -> bool:
        """Whether the client disconnects (early) within `seconds`."""
        return await anyio.to_thread.run_sync(self.disconnected.wait, seconds)

    async def wait_completed(self, seconds: float = 1.0) -> bool:
        return await anyio.to_thread.run_sync(self.completed.wait, seconds)


# -- server -------------------------------------------------------------------------------

Handler = Callable[[RecordedRequest], Reply | None]


class FakeOpenAIServer:
    """A scriptable OpenAI-compatible server on `base_url` (`http://127.0.0.1:<port>/v1`).

    Use as a context manager or call `start()`/`stop()`; `reset()` clears the scripts and the
    records between tests so one server can serve a whole module. `extra_routes` are tried
    before the catch-all OpenAI routes (Starlette routes, for other fakes on the same port).
    """

    def __init__(
        self,
        *,
        models: Sequence[str] = (DEFAULT_MODEL,),
        extra_routes: Sequence[BaseRoute] = (),
    ) -> None:
        self.models = list(models)
        self.handler: Handler | None = None
        self.requests: list[RecordedRequest] = []
        self._queues: dict[str, deque[Reply]] = {}
        self._active = 0
        self._gone_events: set[asyncio.Event] = set()
        self._port: int | None = None
        self._thread: threading.Thread | None = None
        self._server: uvicorn.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._failure: BaseException | None = None
        self.app = Starlette(routes=[*extra_routes, Route("/{path:path}", _Endpoint(self), methods=None)])

    # -- scripting -------------------------------------------------------------------------

    def enqueue(self, *replies: Reply, path: str = "/chat/completions") -> None:
        """Answer the next requests to `path` (relative to /v1) with `replies`, in order."""
        self._queues.setdefault(path, deque()).extend(replies)

    def reset(self) -> None:
        """Forget scripts, handler and records (between tests)."""
        self._queues.clear()
        self.handler = None
        self.requests = []

    @property
    def last_request(self) -> RecordedRequest:
        assert self.requests, "the fake server has received no request"
        return self.requests[-1]

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == "/v1/chat/completions"]

    @property
    def active(self) -> int:
        """Replies being sent right now (streams the client has not finished or left)."""
        return self._active

    def _reply_for(self, record: RecordedRequest) -> Reply:
        path = record.path.removeprefix("/v1")
        queue = self._queues.get(path)
        if queue:
            return queue.popleft()
        if self.handler is not None:
            reply = self.handler(record)
            if reply is not None:
                return reply
        if path == "/chat/completions" and record.method == "POST":
            return text_reply(["Hello", "!"])
        if path == "/models" and record.method == "GET":
            return json_reply(
                {
                    "object": "list",
                    "data": [{"id": m, "object": "model", "owned_by": "fake"} for m in self.models],
                }
            )
        return error_reply(404, f"Unknown path {record.path}", code="not_found")

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        assert self._port is not None, "the fake server is not started"
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def start(self) -> FakeOpenAIServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        self._port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            http="h11",
            ws="none",
            lifespan="off",
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=2,
        )
        self._server = server = uvicorn.Server(config)

        def serve() -> None:
            async def main() -> None:
                self._loop = asyncio.get_running_loop()
                await server.serve(sockets=[sock])

            try:
                asyncio.run(main())
            except BaseException as exc:  # reported by start() or stop()
                self._failure = exc
            finally:
                sock.close()

        self._thread = threading.Thread(target=serve, name=f"fake-openai-{self._port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if self._failure is not None or not self._thread.is_alive():
                raise RuntimeError(f"the fake OpenAI server failed to start: {self._failure!r}")
            if time.monotonic() > deadline:
                raise RuntimeError("the fake OpenAI server did not start within 10 s")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        if self._server is None or self._thread is None:
            return
        loop = self._loop
        if loop is not None and not loop.is_closed():
            # End every script (stalls included) so shutdown does not wait for them.
            try:
                loop.call_soon_threadsafe(self._end_scripts)
            except RuntimeError:
                pass
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._server = self._thread = None

    def _end_scripts(self) -> None:
        for gone in self._gone_events:
            gone.set()

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class _Endpoint:
    """The ASGI app behind every path: records the request, then plays its reply."""

    def __init__(self, server: FakeOpenAIServer) -> None:
        self.server = server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = self.server
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        client = scope.get("client")
        record = RecordedRequest(
            method=scope["method"],
            path=scope["path"],
            query=scope.get("query_string", b"").decode("latin-1"),
            headers={k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]},
            body=bytes(body),
            client=(client[0], client[1]) if client else None,
        )
        server.requests.append(record)
        reply = server._reply_for(record)

        gone = asyncio.Event()  # the client left, or the server is stopping
        server._gone_events.add(gone)

        async def watch() -> None:
            message: Message = {"type": ""}
            while message["type"] != "http.disconnect":
                message = await receive()
            if not record.completed.is_set() and not record.dropped:
                record.disconnected_at = time.monotonic()
                record.disconnected.set()
            gone.set()

        watcher = asyncio.create_task(watch())
        server._active += 1
        try:
            await self._play(reply, record, send, gone)
        finally:
            server._active -= 1
            server._gone_events.discard(gone)
            watcher.cancel()

    @staticmethod
    async def _play(reply: Reply, record: RecordedRequest, send: Send, gone: asyncio.Event) -> None:
        headers = [(b"content-type", reply.content_type.encode())]
        headers += [(k.lower().encode(), v.encode()) for k, v in reply.headers.items()]
        plain = all(isinstance(p, bytes) for p in reply.parts) and not reply.content_type.startswith(
            "text/event-stream"
        )
        if plain:  # a whole body with a Content-Length
            body = b"".join(p for p in reply.parts if isinstance(p, bytes))
            headers.append((b"content-length", str(len(body)).encode()))
            await send({"type": "http.response.start", "status": reply.status, "headers": headers})
            record.completed.set()
            await send({"type": "http.response.body", "body": body, "more_body": False})
            return
        await send({"type": "http.response.start", "status": reply.status, "headers": headers})
        first = True
        for part in reply.parts:
            if isinstance(part, Drop):
                record.dropped = True
                return  # uvicorn closes the transport: the body stays incomplete
            if isinstance(part, Sleep):
                await _pause(part.seconds, gone)
            else:
                if not first and reply.delay:
                    await _pause(reply.delay, gone)
                first = False
                if gone.is_set():
                    return
                record.sent_at.append(time.monotonic())
                await send({"type": "http.response.body", "body": part, "more_body": True})
                record.parts_sent += 1
            if gone.is_set():
                return
        record.completed.set()
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _pause(seconds: float, gone: asyncio.Event) -> None:
    try:
        await asyncio.wait_for(gone.wait(), seconds)
    except TimeoutError:
        pass
