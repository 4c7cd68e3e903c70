"""`LeanRoute`: the streaming endpoints' well-formed requests skip FastAPI's general machinery.

Measured (bench/profile_request.py, cProfile): about half of a streaming request's Python time
went to FastAPI's request handler — solving dependencies, parsing the content type with
`email.message`, `json.loads` and then validating the dict, query-parameter plumbing — for an
endpoint that takes one JSON body, the caller's key and a query parameter at most. At 1,000
arriving streams that per-request cost is what makes them queue (issue 14's TTFT target).

A `LeanRoute` is an ordinary `APIRoute` (same path operation, same OpenAPI description, same
endpoint function) whose handler takes a short path for the common request and hands anything
else to FastAPI's own handler, so every error keeps FastAPI's semantics and the server's error
shape exactly:

* short path: `Content-Type: application/json` (any case, nothing after it), no query string,
  no dependency overrides, and a body that `Model.model_validate_json` accepts; dependencies
  are called directly (each must be an `async def (request)`, e.g. `require_owner`, whose
  HTTP errors propagate as they would from FastAPI);
* anything else (another or no content type, a query string, invalid JSON, a body that fails
  validation, an override in place, a request FastAPI's OpenTelemetry is recording: its spans
  and data stay whole): FastAPI's handler, given the body already read.

Which endpoints qualify is decided once, when the route is built: an endpoint with parameters
of any other kind (path, header, cookie, form, background tasks, sync or generator
dependencies) simply gets FastAPI's handler. The endpoint must return a `Response`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

try:  # FastAPI >= 0.16x builds an included route's handler in its "effective context"
    from fastapi.routing import _effective_route_context_var as _included
except ImportError:  # pragma: no cover - older FastAPI: the route itself is what gets served
    _included = None  # type: ignore[assignment]
try:  # FastAPI's own OpenTelemetry (newer FastAPI): a traced request gets FastAPI's handler
    from fastapi.telemetry import get_telemetry_data as _traced
except ImportError:  # pragma: no cover - older FastAPI: nothing to record

    def _traced(context: Any = None) -> None:  # type: ignore[misc]
        return None


try:  # Starlette's per-request body limit (FastAPI's max_body_size): left to FastAPI's handler
    from starlette.middleware.body_limit import MAX_BODY_SIZE_SCOPE_KEY as _BODY_LIMIT
except ImportError:  # pragma: no cover - older Starlette
    _BODY_LIMIT = "starlette.max_body_size"

__all__ = ["LeanRoute"]

Handler = Callable[[Request], Coroutine[Any, Any, Response]]
_JSON = "application/json"


def _request_only(dep: Dependant) -> bool:
    """A dependency that is an `async def` of the request alone (no params, no sub-dependencies)."""
    return (
        dep.call is not None
        and inspect.iscoroutinefunction(dep.call)
        and dep.request_param_name is not None
        and not (dep.path_params or dep.query_params or dep.header_params or dep.cookie_params)
        and not (dep.body_params or dep.dependencies)
        and len(inspect.signature(dep.call).parameters) == 1
    )


Plan = tuple[str, type[BaseModel], list[tuple[str, Any]], list[tuple[str, Any]]]


def _plan(dependant: Dependant) -> Plan | None:
    """What the short path needs, or None when this endpoint is not one it serves."""
    d = dependant
    if d.call is None or not inspect.iscoroutinefunction(d.call):
        return None
    if d.path_params or d.header_params or d.cookie_params or len(d.body_params) != 1:
        return None
    if d.response_param_name or d.background_tasks_param_name or d.security_scopes_param_name:
        return None
    if d.websocket_param_name or d.http_connection_param_name:
        return None
    body = d.body_params[0]
    model = body.field_info.annotation
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return None
    if not all(_request_only(dep) and dep.name for dep in d.dependencies):
        return None
    if any(q.field_info.is_required() for q in d.query_params):
        return None
    deps = [(str(dep.name), dep.call) for dep in d.dependencies]
    defaults = [(q.name, q.field_info.get_default(call_default_factory=True)) for q in d.query_params]
    return body.name, model, deps, defaults


class LeanRoute(APIRoute):
    """An `APIRoute` with a short path for well-formed JSON requests (see the module docstring)."""

    def get_route_handler(self) -> Handler:
        general = super().get_route_handler()
        # what super() served: this route, or (included in a router) its effective context,
        # which adds the including routers' dependencies and the app's overrides
        context = _included.get() if _included is not None else None
        route: Any = context if context is not None and context.original_route is self else self
        plan = _plan(route.dependant)
        if plan is None or route._embed_body_fields:
            return general
        body_name, model, deps, query_defaults = plan
        defaults = dict(query_defaults)  # the query parameters' values: no query string here
        request_name = route.dependant.request_param_name
        endpoint = route.dependant.call
        assert endpoint is not None
        overrides = route.dependency_overrides_provider
        validate = model.model_validate_json

        async def handler(request: Request) -> Response:
            content_type = request.headers.get("content-type")
            if (
                (content_type or "").lower() != _JSON
                or request.scope.get("query_string")
                or getattr(overrides, "dependency_overrides", None)
                or _BODY_LIMIT in request.scope
                or _traced() is not None
            ):
                return await general(request)
            try:
                raw = await request.body()
            except HTTPException:
                raise
            except Exception as exc:  # the client left mid-body: as FastAPI's handler says it
                raise HTTPException(400, "There was an error parsing the body") from exc
            if not raw:
                return await general(request)
            try:
                body = validate(raw)
            except ValidationError:
                return await general(request)  # FastAPI's own error, in the server's shape
            values: dict[str, Any] = {**defaults, body_name: body}
            if request_name is not None:
                values[request_name] = request
            for name, call in deps:
                values[name] = await call(request)
            response = await endpoint(**values)
            if not isinstance(response, Response):  # pragma: no cover - a programming error
                raise TypeError(f"{endpoint.__name__} must return a Response on a LeanRoute")
            return response

        return handler
