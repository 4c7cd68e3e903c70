"""`FollowResponse` (server/follow.py) driving an inline run, at the ASGI level: a streamed run is
one task while its client is connected; when the client leaves, a run that is not resumable
ends ("the client disconnected"), a resumable one goes on in a task of its own, and its source
(the agent's generator) never sees a cancel for that, whether the client left during a step or
during a write. Cancel by id still reaches the run wherever it is driven.

The socket-level checks (resume after a dropped connection, the grace) are in
tests/runs/test_resume_grace.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tokenrelay.events import AnswerDelta, Event, RunError, RunFinished, RunStarted
from tokenrelay.runs import RunChannel, RunRegistry, registry
from tokenrelay.runs.driver import CANCELLED, CLIENT_GONE
from tokenrelay.server.follow import FollowResponse, sse_response

pytestmark = pytest.mark.anyio


class GatedSource:
    """An agent-like source: yields `first`, waits for `gate`, yields `rest` and the end;
    records whether a cancel reached it and whether it was closed."""

    def __init__(self, first: list[str], rest: list[str]) -> None:
        self.first, self.rest = first, rest
        self.gate = asyncio.Event()
        self.cancelled = False
        self.closed = False
        self.waiting = asyncio.Event()

    async def run(self) -> AsyncIterator[Event]:
        try:
            yield RunStarted(run_id="run_1")
            for text in self.first:
                yield AnswerDelta(text=text)
            self.waiting.set()
            await self.gate.wait()
            for text in self.rest:
                yield AnswerDelta(text=text)
            yield RunFinished(answer="".join(self.first + self.rest))
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        finally:
            self.closed = True


class Client:
    """The ASGI side of one request: what was sent, and a disconnect to deliver."""

    def __init__(self, *, block_writes_after: int | None = None) -> None:
        self.bodies: list[bytes] = []
        self.left = asyncio.Event()
        self.writes_blocked = asyncio.Event()
        self.block_writes_after = block_writes_after

    async def receive(self) -> dict[str, Any]:
        await self.left.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] != "http.response.body":
            return
        if self.block_writes_after is not None and len(self.bodies) >= self.block_writes_after:
            self.writes_blocked.set()
            await asyncio.Event().wait()  # a client that stopped reading: the write never completes
        self.bodies.append(message["body"])

    def text(self) -> str:
        return b"".join(self.bodies).decode()


def start(source: GatedSource, *, resumable: bool) -> tuple[RunRegistry, RunChannel]:
    runs = RunRegistry(grace_s=None)
    ch = runs.start("run_1", source.run(), owner=None, session_id=None, detached=resumable, inline=True)
    return runs, ch


def respond(ch: RunChannel, client: Client) -> asyncio.Task[None]:
    response: FollowResponse = sse_response(ch, {})
    return asyncio.create_task(response({"type": "http"}, client.receive, client.send))  # type: ignore[arg-type]


async def ended(ch: RunChannel) -> Event:
    async with asyncio.timeout(2.0):
        while not ch.done:
            await ch.next_event(len(ch.events))
    return ch.events[-1]


async def test_a_resumable_run_is_driven_by_its_response_while_the_client_is_connected() -> None:
    source = GatedSource(["a"], ["b"])
    _, ch = start(source, resumable=True)
    client = Client()
    response = respond(ch, client)
    await source.waiting.wait()
    assert ch.task is not None and not ch.task.get_name().startswith("run ")  # no task of its own
    source.gate.set()
    await asyncio.wait_for(response, 2.0)
    assert isinstance(ch.events[-1], RunFinished)
    assert '"type":"run_finished"' in client.text().replace(" ", "")


async def test_a_resumable_run_whose_client_leaves_mid_step_goes_on_in_its_own_task() -> None:
    source = GatedSource(["a"], ["b", "c"])
    _, ch = start(source, resumable=True)
    client = Client()
    response = respond(ch, client)
    await source.waiting.wait()  # the response is inside a step, waiting for the model
    client.left.set()
    await asyncio.sleep(0.01)
    assert not response.done()  # it finishes its step first: a cancel must not reach the source
    source.gate.set()
    await asyncio.wait_for(response, 2.0)
    assert ch.task is not None and ch.task.get_name() == "run run_1"
    last = await ended(ch)
    assert isinstance(last, RunFinished) and last.answer == "abc"
    assert not source.cancelled and source.closed


async def test_a_resumable_run_whose_client_leaves_during_a_write_goes_on_in_its_own_task() -> None:
    source = GatedSource(["a", "b"], ["c"])
    _, ch = start(source, resumable=True)
    client = Client(block_writes_after=1)
    response = respond(ch, client)
    await client.writes_blocked.wait()
    client.left.set()
    await asyncio.wait_for(response, 2.0)  # the write is cancelled at once
    assert ch.task is not None and ch.task.get_name() == "run run_1"
    source.gate.set()
    last = await ended(ch)
    assert isinstance(last, RunFinished) and last.answer == "abc"
    assert not source.cancelled


async def test_cancel_by_id_reaches_a_resumable_run_whose_client_left_mid_step() -> None:
    source = GatedSource(["a"], ["b"])
    _, ch = start(source, resumable=True)
    client = Client()
    response = respond(ch, client)
    await source.waiting.wait()
    client.left.set()
    await asyncio.sleep(0.01)
    assert ch.cancel()
    await asyncio.wait_for(response, 2.0)
    last = await ended(ch)
    assert isinstance(last, RunError) and last.code == "cancelled" and last.message == CANCELLED
    assert last.answer == "a" and source.closed


async def test_cancel_by_id_of_a_driven_resumable_run_is_sent_to_its_client() -> None:
    source = GatedSource(["a"], ["b"])
    _, ch = start(source, resumable=True)
    client = Client()
    response = respond(ch, client)
    await source.waiting.wait()
    assert ch.cancel()
    await asyncio.wait_for(response, 2.0)
    assert '"code":"cancelled"' in client.text().replace(" ", "") and source.closed


async def test_a_run_that_is_not_resumable_ends_when_its_client_leaves_mid_step() -> None:
    source = GatedSource(["a"], ["b"])
    _, ch = start(source, resumable=False)
    client = Client()
    response = respond(ch, client)
    await source.waiting.wait()
    client.left.set()
    await asyncio.wait_for(response, 2.0)  # at once: the step is cancelled
    last = ch.events[-1]
    assert isinstance(last, RunError) and last.message == CLIENT_GONE and source.closed


async def test_a_resumable_run_no_response_takes_runs_on_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "ADOPT_S", 0.01)
    source = GatedSource(["a"], ["b"])
    source.gate.set()
    _, ch = start(source, resumable=True)
    last = await ended(ch)
    assert isinstance(last, RunFinished) and last.answer == "ab"
    assert ch.task is not None and ch.task.get_name() == "run run_1"


async def test_a_resumable_run_its_response_took_is_not_started_twice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(registry, "ADOPT_S", 0.01)
    source = GatedSource(["a"], ["b"])
    _, ch = start(source, resumable=True)
    client = Client()
    response = respond(ch, client)
    await source.waiting.wait()
    await asyncio.sleep(0.05)  # past ADOPT_S: the response still drives it
    assert ch.task is not None and not ch.task.get_name().startswith("run ")
    source.gate.set()
    await asyncio.wait_for(response, 2.0)
    assert [type(e).__name__ for e in ch.events].count("RunFinished") == 1
