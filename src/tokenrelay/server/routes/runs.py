"""Runs by id: resume a run's event stream (`Last-Event-ID`) and cancel a run, on this worker
or, with Redis, on whichever worker runs it."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, HTTPException, Request

from tokenrelay.server.deps import Owner, get_coordinator, get_registry
from tokenrelay.server.follow import FollowResponse, sse_response

__all__ = ["router"]

router = APIRouter()


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
    channel = get_registry(request).get(run_id, owner=owner)
    if channel is None:
        coordinator = get_coordinator(request)
        if coordinator is not None:
            from tokenrelay.runs.redis import EventIdPastEnd

            try:
                channel = await coordinator.remote_channel(run_id, owner=owner, start=start)
            except EventIdPastEnd:
                raise past_end from None
            except Exception as exc:  # Redis is away: the run's log cannot be read now
                raise HTTPException(503, f"the shared run log is unavailable: {exc}") from None
        if channel is None:
            raise HTTPException(404, f"no run {run_id!r}")
        # a reader of the shared log: it stops when its client leaves (the run goes on)
        return sse_response(channel, {"X-Run-Id": run_id}, start=start)
    if start > len(channel.events):
        raise past_end
    return sse_response(channel, {"X-Run-Id": run_id}, start=start, detached=True)


@router.post("/runs/{run_id}/cancel", tags=["runs"], summary="Cancel a running run", status_code=202)
async def cancel_run(request: Request, run_id: str, owner: Owner) -> dict[str, Any]:
    channel = get_registry(request).get(run_id, owner=owner)
    if channel is not None:
        return {"run_id": run_id, "cancelled": channel.cancel()}
    coordinator = get_coordinator(request)
    if coordinator is not None:  # another worker may own it: tell them all
        try:
            info = await coordinator.run_info(run_id)
            if info is not None and (info["owner"] or None) == owner:
                await coordinator.publish_cancel(run_id)
                return {"run_id": run_id, "cancelled": True}
        except Exception as exc:  # Redis is away: other workers cannot be told now
            raise HTTPException(503, f"the shared run log is unavailable: {exc}") from None
    raise HTTPException(404, f"no run {run_id!r}")
