"""The tutorial's route (`/chat`) and typed SSE (`/chat/events`).

`/chat` streams the final answer as plain UTF-8 text, flushed per token; when the run fails
mid-stream the body ends without the chunked terminator, so clients see an incomplete
response rather than a short answer that looks whole. `/chat/events` streams every event
as typed SSE and always ends with `run_finished` or `error`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

from fastapi import APIRouter, Body, Query, Request
from fastapi.responses import JSONResponse, Response

from tokenrelay.events import Event, RunError, RunFinished
from tokenrelay.memory.base import Turn, remembered
from tokenrelay.runs.buffers import answer_text
from tokenrelay.server.deps import Owner, get_runner, start_run, wait_for_run
from tokenrelay.server.errors import error_response
from tokenrelay.server.follow import FollowResponse, sse_response
from tokenrelay.server.lean_route import LeanRoute
from tokenrelay.server.schemas import ChatRequest, ChatResponse, HistoryMessage

__all__ = ["router"]

router = APIRouter(route_class=LeanRoute)


def _encode_text(events: Sequence[Event | str], first_id: int) -> bytes:
    return answer_text(events).encode()


def _history_out(turns: list[Turn]) -> list[HistoryMessage]:
    out: list[HistoryMessage] = []
    for user_text, answer in remembered(turns):  # what the agent's memory holds
        out.append(HistoryMessage(role="user", content=user_text))
        out.append(HistoryMessage(role="assistant", content=answer))
    return out


async def _chat(request: Request, body: ChatRequest, owner: str | None) -> Response:
    runner = get_runner(request)
    prior: list[Turn] = []
    memory_k = runner.settings.memory_k
    # the tutorial's `chat_history` (JSON answers only): what memory held before this turn
    history_of = None if body.stream or not memory_k else body.session_id
    if history_of is not None and await runner.store.get_session(history_of, owner=owner) is not None:
        prior = await runner.store.history(history_of, limit=memory_k, answered=True)
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
    await wait_for_run(channel, request)
    last = channel.events[-1]
    if isinstance(last, RunError):
        status = 409 if last.code == "cancelled" else 502
        fields = {"output": last.answer, "session_id": session_id, "run_id": channel.run_id}
        return error_response(
            last.message, status, type_="run_error", code=last.code, headers=headers, fields=fields
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
    return sse_response(channel, {"X-Session-Id": session_id, "X-Run-Id": channel.run_id})
