"""`FollowResponse` (server/follow.py) at the ASGI level, with a run that waits inside an anyio
timeout as httpx reads do: a streamed run that is not resumable is driven by its response (one
task) and ends when its client leaves ("the client disconnected"); a resumable run is a task of
its own that goes on, its source never cancelled, whether the client left while it waited for
the model or during a write. Cancel by id reaches the run either way.

The socket-level checks (resume after a dropped connection, the grace) are in
tests/runs/test_resume_grace.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from tokenrelay.events import AnswerDelta, Event, RunError, RunFinished, RunStarted
from tokenrelay.runs import RunChannel, RunRegistry
from tokenrelay.runs.driver import CANCELLED, CLIENT_GONE
from tokenrelay.server.follow import FollowResponse, sse_response

pytestmark = pytest.mark.anyio


class GatedSource:
    """An agent-like source: yields `first`, waits for `gate` (inside an anyio timeout, as httpx
    reads are: such a scope must be left in the task that entered it), then yields `rest` a
    few ms apart, and the end; records whether a cancel reached it and whether it was closed."""

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
            with anyio.fail_after(5):
                await self.gate.wait()
            for text in self.rest:
                await asyncio.sleep(0.005)
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
    """As the server starts a streamed run (server/deps.py): inline unless resumable."""
    runs = RunRegistry(grace_s=None)
    ch = runs.start(
        "run_1", source.run(), owner=None, session_id=None, detached=resumable, inline=not resumable
    )
    return runs, ch


def respond(ch: RunChannel, client: Client) -> asyncio.Task[None]:
    response: FollowResponse = sse_response(ch, {})
    return asyncio.create_task(response({"type": "http"}, client.receive, client.send))  # type: ignore[arg-type]


async def ended(ch: RunChannel) -> Event:
    async with asyncio.timeout(2.0):
        while not ch.done:
            await ch.next_event(len(ch.events))
    return ch.events[-1]


async def test_a_streamed_run_that_is_not_resumable_is_driven_by_its_response() -> None:
    source = GatedSource(["a"], ["b"])
    _, ch = start(source, resumable=False)
    client = Client()
    response = respond(ch, client)
    await source.waiting.wait()
    assert ch.task is not None and not ch.task.get_name().startswith("run ")  # no task of its own
    source.gate.set()
    await asyncio.wait_for(response, 2.0)
    assert isinstance(ch.events[-1], RunFinished)
    assert '"type":"run_finished"' in client.text().replace(" ", "")


async def test_a_run_that_is_not_resumable_ends_when_its_client_leaves_mid_step() -> None:
    source = GatedSource(["a"], ["b"])
    _, ch = start(source, resumable=False)
    client = Client()
    response = respond(ch, client)
    await source.waiting.wait()
    client.left.set()
    await asyncio.wait_for(response, 2.0)  # at once: the step is cancelled
    last = ch.events[-1]
    assert isinstance(last, RunError) and last.message == CLIENT_GONE and last.answer == "a"
    assert source.cancelled and source.closed


@pytest.mark.parametrize("leaves", ["while the model works", "during a write"])
async def test_a_resumable_run_whose_client_leaves_goes_on_untouched(leaves: str) -> None:
    source = GatedSource(["a", "b"], ["c", "d"])
    _, ch = start(source, resumable=True)
    client = Client(block_writes_after=0 if leaves == "during a write" else None)
    response = respond(ch, client)
    await (client.writes_blocked if leaves == "during a write" else source.waiting).wait()
    assert ch.task is not None and ch.task.get_name() == "run run_1"
    client.left.set()
    await asyncio.wait_for(response, 2.0)  # the response ends at once; the run does not
    assert not ch.done
    source.gate.set()
    last = await ended(ch)
    assert isinstance(last, RunFinished) and last.answer == "abcd"
    assert not source.cancelled


async def test_cancel_by_id_reaches_a_resumable_run_whose_client_left() -> None:
    source = GatedSource(["a"], ["b"])
    _, ch = start(source, resumable=True)
    client = Client()
    response = respond(ch, client)
    await source.waiting.wait()
    client.left.set()
    await asyncio.wait_for(response, 2.0)
    assert ch.cancel()
    last = await ended(ch)
    assert isinstance(last, RunError) and last.code == "cancelled" and last.message == CANCELLED
    assert last.answer == "a" and source.cancelled and source.closed


@pytest.mark.parametrize("resumable", [False, True])
async def test_cancel_by_id_is_sent_to_the_connected_client(resumable: bool) -> None:
    source = GatedSource(["a"], ["b"])
    _, ch = start(source, resumable=resumable)
    client = Client()
    response = respond(ch, client)
    await source.waiting.wait()
    await asyncio.sleep(0.01)
    assert ch.cancel()
    await asyncio.wait_for(response, 2.0)
    assert '"code":"cancelled"' in client.text().replace(" ", "") and source.closed
