"""Sessions: create, list, read history, delete, cancel the running run.

A session of another API key answers exactly like a missing one (404), so ids cannot be
probed."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response

from tokenrelay.documents import FittedDocument
from tokenrelay.server.deps import Owner, get_registry, get_runner, new_session
from tokenrelay.server.schemas import DocumentInfo, SessionDetail, SessionSummary, TitleIn, TurnOut

__all__ = ["router"]

router = APIRouter(prefix="/sessions", tags=["sessions"])


@router.get("", summary="List sessions (most recent first), a page at a time")
async def list_sessions(
    request: Request,
    response: Response,
    owner: Owner,
    limit: Annotated[int, Query(description="sessions per page, 1 to 1000")] = 100,
    cursor: Annotated[
        str | None, Query(description="the `X-Next-Cursor` of the previous page (opaque)", max_length=200)
    ] = None,
) -> list[SessionSummary]:
    """The body is the page (a JSON list, as before pagination). When more sessions follow,
    `X-Next-Cursor` holds the cursor for the next page and `Link` its URL (rel="next")."""
    if not 1 <= limit <= 1000:
        raise HTTPException(422, "limit must be between 1 and 1000")
    store = get_runner(request).store
    if cursor is not None and await store.get_session(cursor, owner=owner) is None:
        raise HTTPException(422, "cursor is not a page of your sessions (the session it names was deleted?)")
    sessions = await store.list_sessions(owner=owner, limit=limit + 1, after=cursor)
    if len(sessions) > limit:
        sessions = sessions[:limit]
        next_cursor = sessions[-1].id
        response.headers["X-Next-Cursor"] = next_cursor
        url = request.url.include_query_params(cursor=next_cursor, limit=limit)
        response.headers["Link"] = f'<{url.path}?{url.query}>; rel="next"'
    return [
        SessionSummary(id=s.id, title=s.title, created_at=s.created_at, updated_at=s.updated_at)
        for s in sessions
    ]


@router.post("", summary="Create a session", status_code=201)
async def create_session(request: Request, owner: Owner) -> SessionSummary:
    s = await new_session(request, owner)
    return SessionSummary(id=s.id, title=s.title, created_at=s.created_at, updated_at=s.updated_at)


@router.get("/{session_id}", summary="A session with its whole history")
async def get_session(request: Request, session_id: str, owner: Owner) -> SessionDetail:
    store = get_runner(request).store
    s = await store.get_session(session_id, owner=owner)
    if s is None:
        raise HTTPException(404, f"no session {session_id!r}")
    turns = await store.history(session_id)
    document = await store.get_document(session_id)
    fit = FittedDocument.stored(document) if document else None
    active = [c.run_id for c in get_registry(request).active(owner=owner) if c.session_id == session_id]
    return SessionDetail(
        id=s.id,
        title=s.title,
        created_at=s.created_at,
        updated_at=s.updated_at,
        turns=[
            TurnOut(
                run_id=t.run_id,
                user_text=t.user_text,
                answer=t.answer,
                status=t.status,
                error=t.error,
                created_at=t.created_at,
                finished_at=t.finished_at,
                finish_reason=t.finish_reason,
                steps=list(t.steps),
            )  # fmt: skip
            for t in turns
        ],
        document=document.name if document else None,
        document_info=DocumentInfo(
            name=fit.name,
            total_chars=fit.total_chars,
            kept_chars=fit.kept_chars,
            truncated=fit.truncated,
            notice=fit.notice(),
        )
        if fit
        else None,
        active_run_id=active[-1] if active else None,
    )


@router.patch("/{session_id}", summary="Rename a session")
async def rename_session(request: Request, session_id: str, body: TitleIn, owner: Owner) -> SessionSummary:
    title = " ".join(body.title.split())  # one line, as the sidebar shows it
    if not title:
        raise HTTPException(422, "title must not be blank")
    s = await get_runner(request).store.set_title(session_id, title, owner=owner)
    if s is None:
        raise HTTPException(404, f"no session {session_id!r}")
    return SessionSummary(id=s.id, title=s.title, created_at=s.created_at, updated_at=s.updated_at)


@router.delete("/{session_id}", summary="Delete a session and its history", status_code=204)
async def delete_session(request: Request, session_id: str, owner: Owner) -> Response:
    for channel in get_registry(request).active(owner=owner):
        if channel.session_id == session_id:
            channel.cancel()
    if not await get_runner(request).store.delete_session(session_id, owner=owner):
        raise HTTPException(404, f"no session {session_id!r}")
    return Response(status_code=204)


@router.post("/{session_id}/cancel", summary="Cancel the session's running run", status_code=202)
async def cancel_session_run(request: Request, session_id: str, owner: Owner) -> dict[str, Any]:
    if await get_runner(request).store.get_session(session_id, owner=owner) is None:
        raise HTTPException(404, f"no session {session_id!r}")
    cancelled = [
        c.run_id
        for c in get_registry(request).active(owner=owner)
        if c.session_id == session_id and c.cancel()
    ]
    return {"session_id": session_id, "cancelled": cancelled}
