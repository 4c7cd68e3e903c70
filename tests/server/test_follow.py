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
from dataclasses import dataclass
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


@dataclass
class Streaming:
    """One request streaming one run, as far as its source waiting for the model (its gate) or,
    with `block_writes`, its first write blocking."""

    source: GatedSource
    ch: RunChannel
    client: Client
    response: asyncio.Task[None]


async def streaming(
    first: list[str], rest: list[str], *, resumable: bool, block_writes: bool = False
) -> Streaming:
    """Start a run as the server starts a streamed one (server/deps.py: inline unless
    resumable) and the response that follows it."""
    source = GatedSource(first, rest)
    ch = RunRegistry(grace_s=None).start(
        "run_1", source.run(), owner=None, session_id=None, detached=resumable, inline=not resumable
    )
    client = Client(block_writes_after=0 if block_writes else None)
    response: FollowResponse = sse_response(ch, {})
    task = asyncio.create_task(response({"type": "http"}, client.receive, client.send))  # type: ignore[arg-type]
    await (client.writes_blocked if block_writes else source.waiting).wait()
    return Streaming(source, ch, client, task)


async def ended(ch: RunChannel) -> Event:
    async with asyncio.timeout(2.0):
        while not ch.done:
            await ch.next_event(len(ch.events))
    return ch.events[-1]


async def test_a_streamed_run_that_is_not_resumable_is_driven_by_its_response() -> None:
    s = await streaming(["a"], ["b"], resumable=False)
    assert s.ch.task is not None and not s.ch.task.get_name().startswith("run ")  # no task of its own
    s.source.gate.set()
    await asyncio.wait_for(s.response, 2.0)
    assert isinstance(s.ch.events[-1], RunFinished)
    assert '"type":"run_finished"' in s.client.text().replace(" ", "")


async def test_a_run_that_is_not_resumable_ends_when_its_client_leaves_mid_step() -> None:
    s = await streaming(["a"], ["b"], resumable=False)
    s.client.left.set()
    await asyncio.wait_for(s.response, 2.0)  # at once: the step is cancelled
    last = s.ch.events[-1]
    assert isinstance(last, RunError) and last.message == CLIENT_GONE and last.answer == "a"
    assert s.source.cancelled and s.source.closed


@pytest.mark.parametrize("leaves", ["while the model works", "during a write"])
async def test_a_resumable_run_whose_client_leaves_goes_on_untouched(leaves: str) -> None:
    s = await streaming(["a", "b"], ["c", "d"], resumable=True, block_writes=leaves == "during a write")
    assert s.ch.task is not None and s.ch.task.get_name() == "run run_1"
    s.client.left.set()
    await asyncio.wait_for(s.response, 2.0)  # the response ends at once; the run does not
    assert not s.ch.done
    s.source.gate.set()
    last = await ended(s.ch)
    assert isinstance(last, RunFinished) and last.answer == "abcd"
    assert not s.source.cancelled


async def test_cancel_by_id_reaches_a_resumable_run_whose_client_left() -> None:
    s = await streaming(["a"], ["b"], resumable=True)
    s.client.left.set()
    await asyncio.wait_for(s.response, 2.0)
    assert s.ch.cancel()
    last = await ended(s.ch)
    assert isinstance(last, RunError) and last.code == "cancelled" and last.message == CANCELLED
    assert last.answer == "a" and s.source.cancelled and s.source.closed


@pytest.mark.parametrize("resumable", [False, True])
async def test_cancel_by_id_is_sent_to_the_connected_client(resumable: bool) -> None:
    s = await streaming(["a"], ["b"], resumable=resumable)
    await asyncio.sleep(0.01)  # the events so far are written
    assert s.ch.cancel()
    await asyncio.wait_for(s.response, 2.0)
    assert '"code":"cancelled"' in s.client.text().replace(" ", "") and s.source.closed
