"""The HTTP routes, one module per area; each imports `server.deps` and `server.errors`, never
`server.app` or another route module. `ROUTERS` is what `create_app` mounts, in order."""

from __future__ import annotations

from fastapi import APIRouter

from tokenrelay.server.routes import chat, documents, info, openai, runs, sessions

__all__ = ["ROUTERS"]

ROUTERS: tuple[APIRouter, ...] = (
    chat.router,
    runs.router,
    info.router,
    sessions.router,
    documents.router,
    openai.router,
)
