"""Optional API keys. With keys configured every API route needs one (Bearer or X-API-Key);
a key's identity (a hash, never the key) owns the sessions and runs it creates."""

from __future__ import annotations

import hashlib
import hmac

from fastapi import HTTPException, Request

__all__ = ["owner_of", "require_owner"]


def owner_of(key: str) -> str:
    return "key_" + hashlib.sha256(key.encode()).hexdigest()[:24]


def _presented_key(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header and header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.headers.get("x-api-key")


async def require_owner(request: Request) -> str | None:
    """FastAPI dependency: the caller's owner id (None when keys are off); 401 otherwise."""
    keys: frozenset[str] = request.app.state.settings.api_keys
    if not keys:
        return None
    presented = _presented_key(request)
    if presented:
        for key in keys:  # constant-time per key: no timing oracle on the key's content
            if hmac.compare_digest(presented.encode(), key.encode()):
                return owner_of(key)
    raise HTTPException(
        status_code=401,
        detail="a valid API key is required (Authorization: Bearer <key> or X-API-Key)",
        headers={"WWW-Authenticate": "Bearer"},
    )
