"""The service routes: `GET /health` (liveness and the version, for anyone; more with a key)
and `GET /info`, what the page needs to know about the model before the first question.

`/info` response (200): `{"model", "version", "notice", "context_window"}`:

* `model`: the backend's model string (`llamacpp`, `hf:OWNER/REPO/FILE.gguf`, `openai:NAME`...);
* `version`: tokenrelay's version;
* `notice`: one line to show as a dismissible note (the tiny default is an English-only
  demo model, and how to switch), or null;
* `context_window`: the model's context window in tokens, or null when unknown.

Behind the API key like every API route when keys are configured (401 otherwise).
"""

from __future__ import annotations

import os
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, Field

from tokenrelay.models import demo_notice
from tokenrelay.server.auth import require_owner
from tokenrelay.server.deps import Owner, __version__, get_coordinator, get_registry, get_runner

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
    runner = get_runner(request)
    name = runner.model_name
    return InfoOut(
        model=name,
        version=__version__,
        notice=demo_notice(name),
        context_window=runner.backend.context_window if runner.has_backend else None,
    )


@router.get("/health")
async def health(request: Request) -> dict[str, Any]:
    """Liveness (the tutorial's 🤙) and the version, for anyone. With a valid API key (or
    when keys are off) also the model, this key's runs in flight and the worker's id: a
    stranger learns nothing about the deployment or other keys' activity."""
    out: dict[str, Any] = {"status": "🤙", "version": __version__}
    try:
        owner = await require_owner(request)
    except HTTPException:
        return out
    keys_on = bool(request.app.state.settings.api_keys)
    registry = get_registry(request)
    coordinator = get_coordinator(request)
    out.update(
        model=get_runner(request).model_name,
        active_runs=len(registry.active(owner=owner)) if keys_on else registry.active_count(),
        worker=coordinator.worker_id if coordinator else os.getpid(),
    )
    return out
