"""Document Q&A: attach a document to a session; list the preset questions."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, Field

from tokenrelay.documents import extract_text, fit_document
from tokenrelay.presets import load_presets
from tokenrelay.server.deps import Owner, get_runner
from tokenrelay.server.schemas import DocumentInfo

__all__ = ["router"]

router = APIRouter(tags=["documents"])


class DocumentIn(BaseModel):
    name: str = Field(min_length=1, max_length=200, description="file name, e.g. notes.md or talk.ipynb")
    content: str = Field(description="the file's text (a notebook's JSON for .ipynb)")


@router.get("/presets", summary="Preset questions for an attached document")
async def presets(request: Request) -> list[dict[str, Any]]:
    return load_presets(request.app.state.settings.presets_file)


@router.put("/sessions/{session_id}/document", summary="Attach a document to a session")
async def attach_document(request: Request, session_id: str, body: DocumentIn, owner: Owner) -> DocumentInfo:
    """The document's text becomes context for every question in the session. When it does
    not fit the model's context window the response says plainly what was left out."""
    runner = get_runner(request)
    if await runner.store.get_session(session_id, owner=owner) is None:
        raise HTTPException(404, f"no session {session_id!r}")
    if "\x00" in body.content:
        raise HTTPException(422, "the document contains NUL characters; attach a text file")
    # parsing and tokenizing a large document takes CPU seconds: never on the event loop
    try:
        text = await asyncio.to_thread(extract_text, body.name, body.content)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    if not text.strip():
        raise HTTPException(422, f"{body.name} has no text")
    fitted = await asyncio.to_thread(
        fit_document, body.name, text, runner.backend, max_tokens=runner.settings.max_tokens
    )
    await runner.store.set_document(
        session_id,
        name=body.name,
        text=fitted.text,
        total_chars=fitted.total_chars,
        total_tokens=fitted.total_tokens,
        budget_tokens=fitted.budget_tokens,
    )
    return DocumentInfo(
        name=body.name,
        total_chars=fitted.total_chars,
        kept_chars=fitted.kept_chars,
        truncated=fitted.truncated,
        notice=fitted.notice(),
    )
