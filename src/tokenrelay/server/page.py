"""The web chat page at `/` and its files under `/static` (shipped inside the package), with
the security headers that keep other sites from framing the origin that holds the API key."""

from __future__ import annotations

import mimetypes
import re
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["DEFAULT_PAGE_POLICY", "STATIC_DIR", "mount_page", "page_policy"]

STATIC_DIR = Path(__file__).parent / "static"


def mount_page(app: FastAPI) -> None:
    """The web chat page at `/`, its files under `/static` (shipped inside the package).

    The page's Content-Security-Policy goes out as a header too (a `<meta>` policy cannot say
    `frame-ancestors`): with `frame-ancestors 'none'` and `X-Frame-Options: DENY` no other
    site can frame the page (clickjacking the origin that keeps the API key)."""
    mimetypes.add_type("text/javascript", ".mjs")  # browsers refuse ES modules served otherwise
    index = STATIC_DIR / "index.html"
    if not index.is_file():
        return
    headers = {
        "Cache-Control": "no-cache",
        "Content-Security-Policy": page_policy(index.read_text(encoding="utf-8")),
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(index, media_type="text/html; charset=utf-8", headers=headers)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")


_META_POLICY = re.compile(r'http-equiv="Content-Security-Policy"\s+content="([^"]+)"', re.IGNORECASE)
DEFAULT_PAGE_POLICY = "default-src 'self'; object-src 'none'; base-uri 'self'"


def page_policy(html: str) -> str:
    """The page's own `<meta>` policy (the page's authors keep it) plus `frame-ancestors 'none'`."""
    match = _META_POLICY.search(html)
    policy = match.group(1).strip().rstrip(";") if match else DEFAULT_PAGE_POLICY
    if "frame-ancestors" not in policy:
        policy += "; frame-ancestors 'none'"
    return policy
