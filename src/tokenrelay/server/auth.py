"""Optional API keys. With keys configured every API route needs one (Bearer or X-API-Key);
a key's identity (a hash, never the key) owns the sessions and runs it creates."""

from __future__ import annotations

import hashlib
import hmac

from fastapi import HTTPException, Request

__all__ = ["KEY_REQUIRED", "owner_for", "owner_of", "require_owner"]

KEY_REQUIRED = "a valid API key is required (Authorization: Bearer <key> or X-API-Key)"


def owner_of(key: str) -> str:
    return "key_" + hashlib.sha256(key.encode()).hexdigest()[:24]


def _presented_key(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header and header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.headers.get("x-api-key")


def owner_for(presented: str | None, keys: frozenset[str]) -> str | None:
    """The owner id of a presented key, or None when it is not one of `keys`."""
    if presented:
        for key in keys:  # constant-time per key: no timing oracle on the key's content
            if hmac.compare_digest(presented.encode(), key.encode()):
                return owner_of(key)
    return None


async def require_owner(request: Request) -> str | None:
    """FastAPI dependency: the caller's owner id (None when keys are off); 401 otherwise."""
    keys: frozenset[str] = request.app.state.settings.api_keys
    if not keys:
        return None
    owner = owner_for(_presented_key(request), keys)
    if owner is not None:
        return owner
    raise HTTPException(status_code=401, detail=KEY_REQUIRED, headers={"WWW-Authenticate": "Bearer"})
