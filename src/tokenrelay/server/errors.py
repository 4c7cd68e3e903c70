"""One place for the server's error JSON: every error response, 4xx or 5xx, has the shape
`{"error": {"message", "type", "code", ...}}` (the OpenAI shape, so their SDK reports it too),
built by `error_body`/`error_response`, and the exception handlers that turn exceptions into it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tokenrelay.agent.protocol import UnsupportedRequest
from tokenrelay.errors import StorageError

__all__ = ["error_body", "error_response", "install_error_handlers"]

_MAX_PROBLEMS = 20


def error_body(
    message: str, *, type_: str = "invalid_request_error", code: str | None = None, **extra: Any
) -> dict[str, Any]:
    """The error object; `extra` goes inside it (e.g. OpenAI's `param`)."""
    return {"error": {"message": message, "type": type_, "code": code, **extra}}


def error_response(
    message: str,
    status: int,
    *,
    type_: str = "invalid_request_error",
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
    fields: Mapping[str, Any] | None = None,
    **extra: Any,
) -> JSONResponse:
    """An error response; `fields` go beside the error object (e.g. a run's partial output)."""
    body = error_body(message, type_=type_, code=code, **extra)
    if fields:
        body.update(fields)
    return JSONResponse(body, status_code=status, headers=dict(headers) if headers else None)


def closing_error(
    message: str, status: int, *, code: str, type_: str = "invalid_request_error", **headers: str
) -> JSONResponse:
    """An error response that closes the connection (the rest of the request is never read)."""
    return error_response(message, status, type_=type_, code=code, headers={"Connection": "close", **headers})


def _parse_problem(exc: BaseException | None) -> str | None:
    """What is wrong with a body the JSON parser rejected (FastAPI chains the cause)."""
    if isinstance(exc, UnicodeDecodeError):
        return f"the request body is not valid UTF-8 (byte 0x{exc.object[exc.start]:02x} at {exc.start})"
    if isinstance(exc, RecursionError):
        return "the request body's JSON is nested too deeply"
    if isinstance(exc, ValueError) and "digits" in str(exc):
        return f"the request body has a number that is too long: {exc}"
    return None


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    kind = "authentication_error" if exc.status_code == 401 else "invalid_request_error"
    if exc.status_code >= 500:
        kind = "server_error"
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 400:
        message = _parse_problem(exc.__cause__) or message
    headers = getattr(exc, "headers", None)
    return error_response(message, exc.status_code, type_=kind, code=str(exc.status_code), headers=headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    content_type = request.headers.get("content-type", "")
    if request.method in ("POST", "PUT", "PATCH") and "json" not in content_type.lower():
        message = f"Content-Type must be application/json (got {content_type or 'none'})"
        return error_response(message, 415, code="unsupported_media_type")
    problems = []
    errors = exc.errors()
    for err in errors[:_MAX_PROBLEMS]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        problems.append(f"{where[:100]}: {err.get('msg', 'invalid')}")
    if len(errors) > _MAX_PROBLEMS:
        problems.append(f"and {len(errors) - _MAX_PROBLEMS} more problems")
    return error_response("; ".join(problems) or "invalid request", 422, code="invalid_request")


async def _storage_error(request: Request, exc: Exception) -> JSONResponse:
    # the database is away (restarting, disk full): say so, and that it is worth a retry
    return error_response(
        str(exc), 503, type_="server_error", code="storage_unavailable", headers={"Retry-After": "1"}
    )


async def _unsupported(request: Request, exc: Exception) -> JSONResponse:
    # the request asks what this server's agent cannot do (a LangChain graph: no per-run
    # sampling settings, no model backend to fit a document to): the caller's to change
    return error_response(str(exc), 400, code=UnsupportedRequest.code)


async def _server_error(request: Request, exc: Exception) -> JSONResponse:
    # a bug: still the documented JSON shape (the server logs the traceback)
    return error_response("internal server error", 500, type_="server_error")


def install_error_handlers(app: FastAPI) -> None:
    """Every exception a route can raise answers in the documented shape."""
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StorageError, _storage_error)
    app.add_exception_handler(UnsupportedRequest, _unsupported)
    app.add_exception_handler(Exception, _server_error)
