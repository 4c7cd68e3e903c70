"""The tutorial's routes (`/health`, `/chat`), typed SSE (`/chat/events`), and runs.

`/chat` streams the final answer as plain UTF-8 text, flushed per token; when the run fails
mid-stream the body ends without the chunked terminator, so clients see an incomplete
response rather than a short answer that looks whole. `/chat/events` streams every event
as typed SSE and always ends with `run_finished` or `error`.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Header, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response

from tokenrelay.agent.loop import Agent
from tokenrelay.api import Runner
from tokenrelay.backends.base import GenerationSettings
from tokenrelay.events import AnswerDelta, Event, RunError, RunFinished
from tokenrelay.memory.base import Turn, remembered
from tokenrelay.run import new_run_id
from tokenrelay.server.auth import require_owner
from tokenrelay.server.quotas import quotas_of
from tokenrelay.server.runs import RunChannel, RunRegistry
from tokenrelay.server.schemas import ChatRequest, ChatResponse, HistoryMessage
from tokenrelay.server.streaming import FollowResponse
from tokenrelay.sse import KEEPALIVE, encode_batch

__all__ = ["router", "start_run"]

router = APIRouter()

Owner = Annotated[str | None, Depends(require_owner)]


def _runner(request: Request) -> Runner:
    runner: Runner = request.app.state.runner
    return runner


def _registry(request: Request) -> RunRegistry:
    registry: RunRegistry = request.app.state.registry
    return registry


@router.get("/health", tags=["service"])
async def health(request: Request) -> dict[str, Any]:
    """Liveness (the tutorial's 🤙) and the version, for anyone. With a valid API key (or
    when keys are off) also the model, this key's runs in flight and the worker's id: a
    stranger learns nothing about the deployment or other keys' activity."""
    from tokenrelay.server.app import __version__

    out: dict[str, Any] = {"status": "🤙", "version": __version__}
    try:
        owner = await require_owner(request)
    except HTTPException:
        return out
    keys_on = bool(request.app.state.settings.api_keys)
    registry = _registry(request)
    coordinator = request.app.state.coordinator
    out.update(
        model=_runner(request).backend.name,
        active_runs=len(registry.active(owner=owner)) if keys_on else registry.active_count(),
        worker=coordinator.worker_id if coordinator else os.getpid(),
    )
    return out


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
    its system prompt; an agent that cannot take them (a LangChain agent) makes that a 400."""
    runner = _runner(request)
    limit = runner.settings.max_text_chars
    if not text.strip():
        raise HTTPException(422, "text must not be empty")
    if len(text) > limit:
        raise HTTPException(413, f"text is {len(text)} characters; the limit is {limit}")
    if "\x00" in text:
        raise HTTPException(422, "text must not contain NUL characters")
    quotas = quotas_of(request.app)
    run_id = new_run_id()
    if quotas is not None:
        await quotas.claim_run(owner, run_id)
    try:
        if use_session:
            if session_id is not None:
                if await runner.store.get_session(session_id, owner=owner) is None:
                    raise HTTPException(404, f"no session {session_id!r}")
            else:
                if quotas is not None:
                    await quotas.claim_session(owner)
                session_id = (await runner.store.create_session(owner=owner)).id
        overrides: dict[str, Any] = {}
        if generation is not None or system is not None:
            if not isinstance(runner.agent, Agent):
                what = "generation settings" if generation is not None else "a system prompt"
                raise HTTPException(400, f"this server's agent does not take {what} per request")
            overrides = {"generation": generation, "system": system}
        events = runner.agent.run(
            text,
            session_id=session_id if use_session else None,
            mode=mode,
            run_id=run_id,
            history=history,
            answer_policy=answer_policy,
            **overrides,
        )
        # a streamed, non-resumable run lives and dies with its response: let the response drive it
        channel = _registry(request).start(
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


def _encode_text(events: Sequence[Event], first_id: int) -> bytes:
    return "".join([e.text for e in events if type(e) is AnswerDelta]).encode()


def _history_out(turns: list[Turn]) -> list[HistoryMessage]:
    out: list[HistoryMessage] = []
    for user_text, answer in remembered(turns):  # what the agent's memory holds
        out.append(HistoryMessage(role="user", content=user_text))
        out.append(HistoryMessage(role="assistant", content=answer))
    return out


async def _chat(request: Request, body: ChatRequest, owner: str | None) -> Response:
    runner = _runner(request)
    prior: list[Turn] = []
    memory_k = runner.settings.memory_k
    known = body.session_id is not None and await runner.store.get_session(body.session_id, owner=owner)
    if not body.stream and body.session_id is not None and known and memory_k:
        prior = await runner.store.history(body.session_id, limit=memory_k, answered=True)
    channel, session_id = await start_run(
        request,
        body.text,
        owner=owner,
        session_id=body.session_id,
        mode=body.mode,
        resumable=body.resumable,
        streamed=body.stream,
        answer_policy=body.answer_policy,
    )
    assert session_id is not None
    headers = {"X-Session-Id": session_id, "X-Run-Id": channel.run_id}
    if body.stream:
        return FollowResponse(
            channel,
            _encode_text,
            media_type="text/plain; charset=utf-8",
            headers=headers,
            abort_on_error=True,
        )
    await _wait(channel, request)
    last = channel.events[-1]
    if isinstance(last, RunError):
        status = 409 if last.code == "cancelled" else 502
        error = {"message": last.message, "type": "run_error", "code": last.code}
        return JSONResponse(
            {"error": error, "output": last.answer, "session_id": session_id, "run_id": channel.run_id},
            status_code=status,
            headers=headers,
        )
    assert isinstance(last, RunFinished)
    payload = ChatResponse(
        input=body.text,
        chat_history=_history_out(prior),
        output=last.answer,
        session_id=session_id,
        run_id=channel.run_id,
        finish_reason=last.finish_reason,
    )
    return JSONResponse(payload.model_dump(), headers=headers)


async def _wait(channel: RunChannel, request: Request) -> None:
    """Wait for a run; if the client leaves (or this request is cancelled), cancel the run."""
    assert channel.task is not None

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        channel.cancel()

    watcher = asyncio.create_task(watch())
    try:
        await asyncio.shield(channel.task)
    except asyncio.CancelledError:
        channel.cancel()
        raise
    finally:
        watcher.cancel()


_CHAT_DOC = (
    "The final answer only, streamed as text/plain (UTF-8), flushed per token. The session id comes "
    "back in `X-Session-Id`, the run id in `X-Run-Id`. With `stream: false`, one JSON object as in "
    "the tutorial. A failure mid-stream ends the body without the chunked terminator (an incomplete "
    "response), never a short answer that looks complete."
)


@router.post(
    "/chat", tags=["chat"], summary="Chat (streamed text)", description=_CHAT_DOC, response_model=None
)
async def chat_post(request: Request, body: ChatRequest, owner: Owner) -> Response:
    return await _chat(request, body, owner)


@router.get("/chat", tags=["chat"], summary="Chat (GET with a JSON body, as the tutorial's client sends it)",
            description=_CHAT_DOC, response_model=None)  # fmt: skip
async def chat_get(request: Request, body: Annotated[ChatRequest, Body()], owner: Owner) -> Response:
    return await _chat(request, body, owner)


def _sse_response(
    channel: RunChannel, headers: dict[str, str], start: int = 0, *, detached: bool = False
) -> FollowResponse:
    return FollowResponse(
        channel,
        encode_batch,
        media_type="text/event-stream; charset=utf-8",
        headers=headers,
        start=start,
        keepalive=KEEPALIVE,
        cancel_on_disconnect=not detached,
    )


@router.post(
    "/chat/events",
    tags=["chat"],
    summary="Chat (typed server-sent events)",
    description=(
        "`text/event-stream`: `event:` is the event type (run_started, answer_delta, reasoning_delta, "
        "narration, tool_call_started, tool_call_finished, error, run_finished), `data:` its JSON, `id:` its "
        "index in the run (use it as Last-Event-ID with GET /runs/{run_id}/events to resume). The last event "
        "is run_finished (whole answer, usage, timings, finish_reason: stop or length) or error. "
        "A `narration` event re-labels answer text already sent: the model speaking before a tool call, "
        "not the final answer (consumers that ignore it still show correct text)."
    ),
    response_model=None,
)
async def chat_events(
    request: Request,
    body: ChatRequest,
    owner: Owner,
    mode: Annotated[Literal["final", "full"] | None, Query(description="overrides the body's mode")] = None,
) -> FollowResponse:
    channel, session_id = await start_run(
        request,
        body.text,
        owner=owner,
        session_id=body.session_id,
        mode=mode or body.mode,
        resumable=body.resumable,
        streamed=True,
        answer_policy=body.answer_policy,
    )
    assert session_id is not None
    return _sse_response(channel, {"X-Session-Id": session_id, "X-Run-Id": channel.run_id})


@router.get(
    "/runs/{run_id}/events", tags=["runs"], summary="Resume a run's event stream", response_model=None
)
async def run_events(
    request: Request,
    run_id: str,
    owner: Owner,
    last_event_id: Annotated[str | None, Header()] = None,
) -> FollowResponse:
    """Every event after `Last-Event-ID` (all of them without it), then the live tail — from
    this worker's memory, or, with Redis, from the run's shared log when another worker runs it.
    Following a run this way never cancels it."""
    start = 0
    if last_event_id:
        try:
            start = int(last_event_id) + 1
        except ValueError:
            raise HTTPException(422, "Last-Event-ID must be an event id (an integer)") from None
    if start < 0:
        raise HTTPException(422, f"Last-Event-ID {last_event_id} is not an event of this run")
    past_end = HTTPException(422, f"Last-Event-ID {last_event_id} is not an event of this run")
    channel = _registry(request).get(run_id, owner=owner)
    if channel is None:
        coordinator = request.app.state.coordinator
        if coordinator is not None:
            from tokenrelay.server.coordination import EventIdPastEnd

            try:
                channel = await coordinator.remote_channel(run_id, owner=owner, start=start)
            except EventIdPastEnd:
                raise past_end from None
            except Exception as exc:  # Redis is away: the run's log cannot be read now
                raise HTTPException(503, f"the shared run log is unavailable: {exc}") from None
        if channel is None:
            raise HTTPException(404, f"no run {run_id!r}")
        # a reader of the shared log: it stops when its client leaves (the run goes on)
        return _sse_response(channel, {"X-Run-Id": run_id}, start=start)
    if start > len(channel.events):
        raise past_end
    return _sse_response(channel, {"X-Run-Id": run_id}, start=start, detached=True)


@router.post("/runs/{run_id}/cancel", tags=["runs"], summary="Cancel a running run", status_code=202)
async def cancel_run(request: Request, run_id: str, owner: Owner) -> dict[str, Any]:
    channel = _registry(request).get(run_id, owner=owner)
    if channel is not None:
        return {"run_id": run_id, "cancelled": channel.cancel()}
    coordinator = request.app.state.coordinator
    if coordinator is not None:  # another worker may own it: tell them all
        try:
            info = await coordinator.run_info(run_id)
            if info is not None and (info["owner"] or None) == owner:
                await coordinator.publish_cancel(run_id)
                return {"run_id": run_id, "cancelled": True}
        except Exception as exc:  # Redis is away: other workers cannot be told now
            raise HTTPException(503, f"the shared run log is unavailable: {exc}") from None
    raise HTTPException(404, f"no run {run_id!r}")
