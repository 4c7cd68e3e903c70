"""Runs of LangChain code as tokenrelay event streams: `follow_task` (a handler's events while
its work runs as a task), `stream_with_callbacks` (tutorial-style code, one fresh handler per
run) and `CallbackAgent` (such code served as a tokenrelay agent: server, CLI, library).
"""

from __future__ import annotations

import tokenrelay.integrations.langchain.common  # noqa: F401  (first: says which extra to install)

# isort: split

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from typing import Any

from tokenrelay.agent.protocol import AgentBase, RunRequest
from tokenrelay.events import Event, RunStarted
from tokenrelay.integrations.langchain.handler import TokenrelayCallbackHandler
from tokenrelay.integrations.langchain.routing import AnswerPolicy, StreamMode

__all__ = ["CallbackAgent", "follow_task", "stream_with_callbacks"]


async def _settle(task: asyncio.Task[Any]) -> None:
    """Cancel `task` if it still runs and wait (bounded) for it to finish; never raises."""
    if not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=10)
    if task.done() and not task.cancelled():
        task.exception()  # retrieved: no "exception was never retrieved" warning


async def follow_task(handler: TokenrelayCallbackHandler, work: Awaitable[Any]) -> AsyncIterator[Event]:
    """Run `work` as a task and yield `handler`'s events after `RunStarted` (the caller yields
    that), ending when the task ends: its result or exception becomes the terminal event.
    If the consumer stops early (or is cancelled) the task is cancelled."""
    handler.bind_loop()

    async def main() -> None:
        try:
            result = await work
        except asyncio.CancelledError:
            handler.fail(asyncio.CancelledError("the run was cancelled"))
            raise
        except BaseException as exc:  # reported as the terminal RunError
            handler.fail(exc)
            return
        handler.finish(result)

    task = asyncio.create_task(main(), name=f"langchain {handler.run_id}")
    try:
        async for event in handler._follow():
            yield event
    finally:
        await _settle(task)


def stream_with_callbacks(
    factory: Callable[[TokenrelayCallbackHandler], Awaitable[Any]],
    *,
    final_only: bool = False,
    policy: AnswerPolicy | None = None,
    mode: StreamMode = "final",
    answer_nodes: Collection[str] | None = None,
    run_id: str | None = None,
    session_id: str | None = None,
    model: str = "langchain",
) -> AsyncIterator[Event]:
    """Run tutorial-style code with a fresh handler and stream its events.

    `factory(handler)` starts the user's run with `callbacks=[handler]` and returns an
    awaitable (for sync code: `lambda h: asyncio.to_thread(chain.invoke, x, {"callbacks": [h]})`).
    The run ends when that awaitable does; its result supplies the answer if none streamed."""
    handler = TokenrelayCallbackHandler(
        final_only=final_only,
        policy=policy,
        mode=mode,
        answer_nodes=answer_nodes,
        run_id=run_id,
        session_id=session_id,
        model=model,
        auto_finish=False,
    )
    return _follow_start(handler, lambda: factory(handler))


async def _follow_start(handler: TokenrelayCallbackHandler, start: Callable[[], Any]) -> AsyncIterator[Event]:
    """`RunStarted`, then `follow_task(handler, start())`; a `start` that fails or returns no
    awaitable ends the run with its `RunError`."""
    yield RunStarted(run_id=handler.run_id, session_id=handler.session_id, model=handler.model)
    try:
        work = start()
        if not inspect.isawaitable(work):
            raise TypeError("the factory must return an awaitable (wrap sync code in asyncio.to_thread)")
    except Exception as exc:
        handler.fail(exc)
        yield handler._terminal()
        return
    async for event in follow_task(handler, work):
        yield event


class CallbackAgent(AgentBase):
    """Serve tutorial-style LangChain code through tokenrelay (raw /chat, SSE, OpenAI, page).

    `factory(text, handler)` runs the user's chain or agent for one request with
    `callbacks=[handler]` and returns an awaitable; the handler is new for every run and
    carries `run_id`, `session_id` and `history` (the (user, assistant) pairs the caller gave)
    for code that needs them. A tokenrelay agent (`stream(RunRequest)`, `run(text, ...)`)."""

    def __init__(
        self,
        factory: Callable[[str, TokenrelayCallbackHandler], Awaitable[Any]],
        *,
        final_only: bool = False,
        policy: AnswerPolicy | None = None,
        answer_nodes: Collection[str] | None = None,
        name: str = "langchain",
    ) -> None:
        self.factory = factory
        self.final_only = final_only
        self.policy = policy
        self.answer_nodes = answer_nodes
        self._name = name

    @property
    def name(self) -> str:
        return self._name

    def stream(self, request: RunRequest) -> AsyncIterator[Event]:
        """`request.answer_policy` is accepted and ignored: the factory's own policy decides
        what is answer text."""
        handler = TokenrelayCallbackHandler(
            final_only=self.final_only,
            policy=self.policy,
            mode=request.mode,
            answer_nodes=self.answer_nodes,
            run_id=request.run_id,
            session_id=request.session_id,
            model=self._name,
            auto_finish=False,
            history=request.history,
        )
        return _follow_start(handler, lambda: self.factory(request.text, handler))
