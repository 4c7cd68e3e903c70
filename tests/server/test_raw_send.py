"""The server's own `send` for streamed bodies (server/raw_send.py): offered with tokenrelay's
own middlewares only; an application that adds one gets every body through it, and streams
stay whole either way."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import Request
from starlette.testclient import TestClient
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from replies import final
from sse_frames import parse_sse
from tokenrelay.config import Settings
from tokenrelay.memory import InMemorySessionStore
from tokenrelay.server.app import create_app
from tokenrelay.server.raw_send import RAW_SEND
from tokenrelay.testing import ScriptedBackend

ANSWER = 'Raw send: 日本語, "quotes", } braces, a \\ backslash and\nnew lines. ' * 4


class Tally:
    """An embedding application's middleware that watches response bodies."""

    seen = bytearray()

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def watch(message: Message) -> None:
            if message["type"] == "http.response.body":
                Tally.seen += message.get("body", b"")
            await send(message)

        await self.app(scope, receive, watch)


def _app() -> Any:
    backend = ScriptedBackend(replies=[final(ANSWER)], token_size=3)
    app = create_app(
        Settings(model="scripted", db="memory://"), backend=backend, store=InMemorySessionStore()
    )

    @app.get("/_probe")
    async def probe(request: Request) -> dict[str, bool]:
        return {"raw": RAW_SEND in request.scope}

    return app


def _answer(body: bytes) -> str:
    events = [(name, data) for _id, name, data in parse_sse(iter(body.decode().split("\n")))]
    assert events[-1][0] == "run_finished"
    streamed = "".join(data["text"] for name, data in events if name == "answer_delta")
    assert streamed == events[-1][1]["answer"]
    return streamed


@pytest.mark.parametrize("watched", [False, True])
def test_streams_are_whole_and_an_added_middleware_sees_every_body(watched: bool) -> None:
    app = _app()
    if watched:
        app.add_middleware(Tally)
    Tally.seen = bytearray()
    with TestClient(app, base_url="http://localhost") as client:
        assert client.get("/_probe").json() == {"raw": not watched}
        Tally.seen = bytearray()
        with client.stream("POST", "/chat/events", json={"text": "hi"}) as response:
            raw = b"".join(response.iter_raw())
    assert response.status_code == 200
    assert _answer(raw) == ANSWER
    assert bytes(Tally.seen) == (raw if watched else b"")
