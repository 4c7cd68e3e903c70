"""`GET /info`: what the page needs to know about the model before the first question.

Response (200): `{"model", "version", "notice", "context_window"}`:

* `model`: the backend's model string (`llamacpp`, `hf:OWNER/REPO/FILE.gguf`, `openai:NAME`...);
* `version`: tokenrelay's version;
* `notice`: one line to show as a dismissible note (the tiny default is an English-only
  demo model, and how to switch), or null;
* `context_window`: the model's context window in tokens, or null when unknown.

Behind the API key like every API route when keys are configured (401 otherwise).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from tokenrelay.models import demo_notice
from tokenrelay.server.routes_chat import Owner, _runner

__all__ = ["router"]

router = APIRouter(tags=["service"])


class InfoOut(BaseModel):
    model: str = Field(description="the model string of the backend in use")
    version: str
    notice: str | None = Field(
        description="a one-line note for people (e.g. the demo model's limits), or null"
    )
    context_window: int | None = Field(description="the model's context window in tokens, when known")


@router.get("/info", summary="The model in use, its context window and any notice for people")
async def info(request: Request, owner: Owner) -> InfoOut:
    from tokenrelay.server.app import __version__

    backend = _runner(request).backend
    return InfoOut(
        model=backend.name,
        version=__version__,
        notice=demo_notice(backend.name),
        context_window=backend.context_window,
    )
