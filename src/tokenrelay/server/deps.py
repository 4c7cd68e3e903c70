"""What routes share: the caller (`Owner`), the long-lived parts on `app.state` (runner, run
registry, Redis coordinator), the version, and starting and awaiting a run. Routes import
this module and `errors`, never `app` or each other.

`start_run` is the one place a request becomes a run (`runner.stream(RunRequest)`, the door
the CLI uses too): validation, session, quotas, the registry, metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Annotated, Literal

from fastapi import Depends, HTTPException, Request

from tokenrelay.agent.protocol import RunRequest
from tokenrelay.api import Runner
from tokenrelay.backends.base import GenerationSettings
from tokenrelay.memory.base import SessionInfo
from tokenrelay.memory.common import new_session_id
from tokenrelay.run import new_run_id
from tokenrelay.runs import RunChannel, RunRegistry
from tokenrelay.server.auth import require_owner
from tokenrelay.server.quotas import quotas_of

if TYPE_CHECKING:
    from tokenrelay.runs.redis import RedisCoordinator

__all__ = [
    "Owner",
    "__version__",
    "get_coordinator",
    "get_registry",
    "get_runner",
    "new_session",
    "start_run",
    "wait_for_run",
]

try:
    __version__ = version("tokenrelay")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0"

#: the caller's owner id (None when API keys are off); 401 without a valid key
Owner = Annotated[str | None, Depends(require_owner)]


def get_runner(request: Request) -> Runner:
    runner: Runner = request.app.state.runner
    return runner


def get_registry(request: Request) -> RunRegistry:
    registry: RunRegistry = request.app.state.registry
    return registry


def get_coordinator(request: Request) -> RedisCoordinator | None:
    """The Redis coordinator when several workers share runs, else None."""
    coordinator: RedisCoordinator | None = request.app.state.coordinator
    return coordinator


async def start_run(
    request: Request,
    text: str,
    *,
    owner: str | None,
    session_id: str | None,
    mode: Literal["final", "full"] = "final",
    history: Sequence[tuple[str, str]] = (),
    use_session: bool = True,
    resumable: bool = False,
    streamed: bool = False,
    answer_policy: Literal["stream", "hold"] | None = None,
    generation: GenerationSettings | None = None,
    system: str | None = None,
) -> tuple[RunChannel, str | None]:
    """Validate, resolve the session (404 if it is not the caller's), and start the run.
    `generation` replaces the agent's sampling settings for this run, `system` is added to
    its system prompt; an agent that cannot take them (a LangChain agent) makes that a 400
    (`UnsupportedRequest`). A streamed, non-resumable run lives and dies with its response:
    the response drives it."""
    runner = get_runner(request)
    _check_text(text, runner.settings.max_text_chars)
    quotas = quotas_of(request.app)
    run_id = new_run_id()
    if quotas is not None:
        await quotas.claim_run(owner, run_id)
    try:
        new = False
        if use_session:
            session_id, new = await _session_for(request, runner, owner, session_id)
        # raises UnsupportedRequest (a 400, server/errors.py) for what the agent cannot take
        events = runner.stream(
            RunRequest(
                text,
                session_id=session_id if use_session else None,
                mode=mode,
                run_id=run_id,
                history=tuple(history),
                answer_policy=answer_policy,
                generation=generation,
                system=system,
                new_session=new,
                owner=owner,
            ),
            owner=owner,
            session_ready=True,
        )
        channel = get_registry(request).start(
            run_id,
            events,
            owner=owner,
            session_id=session_id,
            detached=resumable,
            inline=streamed and not resumable,
        )
    except BaseException:
        if quotas is not None:
            await quotas.release_run(owner, run_id)
        raise
    if quotas is not None:
        quotas.started(owner, run_id)
    request.app.state.monitor.track(channel)
    return channel, session_id


def _check_text(text: str, limit: int) -> None:
    if not text.strip():
        raise HTTPException(422, "text must not be empty")
    if len(text) > limit:
        raise HTTPException(413, f"text is {len(text)} characters; the limit is {limit}")
    if "\x00" in text:
        raise HTTPException(422, "text must not contain NUL characters")


async def _session_for(
    request: Request, runner: Runner, owner: str | None, session_id: str | None
) -> tuple[str, bool]:
    """The caller's session `session_id` (404 when it is not theirs), or a new one; True when
    the new one is left to the run to create, with its first turn (one hop to the database
    instead of two), which the agent does when it keeps its turns in the runner's store."""
    if session_id is not None:
        if await runner.store.get_session(session_id, owner=owner) is None:
            raise HTTPException(404, f"no session {session_id!r}")
        return session_id, False
    agent = runner.agent
    if "new_session" in agent.accepts and getattr(agent, "store", None) is runner.store:
        await _claim_session(request, owner)
        return new_session_id(), True
    return (await new_session(request, owner)).id, False


async def new_session(request: Request, owner: str | None) -> SessionInfo:
    """A new session of `owner`, within the per-key session quota (429 past it)."""
    await _claim_session(request, owner)
    return await get_runner(request).store.create_session(owner=owner)


async def _claim_session(request: Request, owner: str | None) -> None:
    """Room for one more session of `owner` (429 when the per-key quota is reached)."""
    quotas = quotas_of(request.app)
    if quotas is not None:
        await quotas.claim_session(owner)


async def wait_for_run(channel: RunChannel, request: Request) -> None:
    """Wait for a run (in its own task) to end; if the client leaves (or this request is
    cancelled), cancel the run."""
    task = channel.task
    assert task is not None

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        channel.cancel()

    watcher = asyncio.create_task(watch())
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        channel.cancel()
        raise
    finally:
        watcher.cancel()
