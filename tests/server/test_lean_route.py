"""LeanRoute: the short path for well-formed JSON requests answers exactly as FastAPI's own handler
would, for every request (same status, same body, same headers that matter), and is the path
a well-formed request takes."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

import httpx
import pytest
from fastapi import APIRouter, Body, Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tokenrelay.server.lean_route as lean_route
from tokenrelay.server.auth import require_owner
from tokenrelay.server.errors import install_error_handlers
from tokenrelay.server.lean_route import LeanRoute
from tokenrelay.server.schemas import ChatRequest

Owner = Annotated[str | None, Depends(require_owner)]


def make_router(route_class: type[Any] | None) -> APIRouter:
    """The chat routes' shapes: a body model, the caller's key, an optional query parameter."""
    router = APIRouter(route_class=route_class) if route_class else APIRouter()

    @router.post("/events", response_model=None)
    async def events(
        request: Request,
        body: ChatRequest,
        owner: Owner,
        mode: Annotated[Literal["final", "full"] | None, Query()] = None,
    ) -> Response:
        return JSONResponse(
            {"body": body.model_dump(), "owner": owner, "mode": mode, "path": request.url.path}
        )

    @router.get("/events", response_model=None)
    async def events_get(body: Annotated[ChatRequest, Body()], owner: Owner) -> Response:
        return JSONResponse({"body": body.model_dump(), "owner": owner})

    @router.post("/sessions/{sid}", response_model=None)
    async def with_path(sid: str, body: ChatRequest) -> Response:
        return JSONResponse({"sid": sid, "body": body.model_dump()})

    return router


def make_app(route_class: type[Any] | None, *, keys: frozenset[str] = frozenset()) -> FastAPI:
    app = FastAPI()
    app.state.settings = type("S", (), {"api_keys": keys})()
    install_error_handlers(app)
    app.include_router(make_router(route_class), prefix="/chat")
    return app


KEYS = frozenset({"sekrit"})
LEAN, PLAIN = make_app(LeanRoute), make_app(None)
LEAN_KEYED, PLAIN_KEYED = make_app(LeanRoute, keys=KEYS), make_app(None, keys=KEYS)


async def answer(app: FastAPI, method: str, url: str, content: bytes, headers: dict[str, str]) -> Any:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        r = await client.request(method, url, content=content, headers=headers)
    kept = {k: v for k, v in r.headers.items() if k in ("www-authenticate", "content-type")}
    return r.status_code, r.content, kept


async def same_answer(
    method: str, url: str, content: bytes, headers: dict[str, str], *, keyed: bool = False
) -> tuple[int, bytes]:
    lean, plain = (LEAN_KEYED, PLAIN_KEYED) if keyed else (LEAN, PLAIN)
    got = await answer(lean, method, url, content, headers)
    want = await answer(plain, method, url, content, headers)
    assert got == want, (content, headers)
    return got[0], got[1]


JSON = {"content-type": "application/json"}

CASES: list[tuple[str, bytes, dict[str, str]]] = [
    ("/chat/events", b'{"text": "hi"}', JSON),
    ("/chat/events", b'{"text": "hi", "mode": "full", "session_id": "abc_1", "resumable": true}', JSON),
    ("/chat/events", b'{"text": "hi"}', {"content-type": "Application/JSON"}),
    ("/chat/events", b'{"text": "hi"}', {"content-type": "application/json; charset=utf-8"}),
    ("/chat/events", b'{"text": "hi"}', {"content-type": "application/vnd.api+json"}),
    ("/chat/events", b'{"text": "hi"}', {"content-type": "text/plain"}),
    ("/chat/events", b'{"text": "hi"}', {}),
    ("/chat/events", b"", JSON),
    ("/chat/events", b"{", JSON),
    ("/chat/events", b'{"text": "hi",}', JSON),
    ("/chat/events", b"[]", JSON),
    ("/chat/events", b"null", JSON),
    ("/chat/events", b'"text"', JSON),
    ("/chat/events", b"{}", JSON),
    ("/chat/events", b'{"text": ""}', JSON),
    ("/chat/events", b'{"text": 5}', JSON),
    ("/chat/events", b'{"text": "hi", "stream": "yes"}', JSON),
    ("/chat/events", b'{"text": "hi", "stream": "true"}', JSON),
    ("/chat/events", b'{"text": "hi", "mode": "all"}', JSON),
    ("/chat/events", b'{"text": "hi", "extra": 1}', JSON),
    ("/chat/events", b'{"text": "hi", "session_id": "no spaces"}', JSON),
    ("/chat/events", b'{"text": "a", "text": "b"}', JSON),
    ("/chat/events", b'{"text": "\\ud800"}', JSON),
    ("/chat/events", b'{"text": "\xff"}', JSON),
    ("/chat/events", b'{"text": "hi", "stream": NaN}', JSON),
    ("/chat/events", b'{"text": "hi", "stream": 1e999}', JSON),
    ("/chat/events", b'{"text": "hi", "stream": ' + b"9" * 5000 + b"}", JSON),
    ("/chat/events", b'{"text": ' + b"[" * 3000 + b"]" * 3000 + b"}", JSON),
    ("/chat/events?mode=full", b'{"text": "hi"}', JSON),
    ("/chat/events?mode=bad", b'{"text": "hi"}', JSON),
    ("/chat/events?other=1", b'{"text": "hi"}', JSON),
    ("/chat/sessions/s1", b'{"text": "hi"}', JSON),
    ("/chat/sessions/s1", b"{", JSON),
]


@pytest.mark.anyio
@pytest.mark.parametrize(("url", "content", "headers"), CASES)
async def test_every_request_gets_what_fastapi_would_answer(
    url: str, content: bytes, headers: dict[str, str]
) -> None:
    await same_answer("POST", url, content, headers)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "auth", [{}, {"authorization": "Bearer sekrit"}, {"x-api-key": "sekrit"}, {"x-api-key": "wrong"}]
)
@pytest.mark.parametrize("content", [b'{"text": "hi"}', b'{"text": 5}', b"{", b""])
async def test_keys_and_body_errors_come_in_fastapis_order(auth: dict[str, str], content: bytes) -> None:
    status, _ = await same_answer("POST", "/chat/events", content, {**JSON, **auth}, keyed=True)
    if auth in ({"authorization": "Bearer sekrit"}, {"x-api-key": "sekrit"}) and content == b'{"text": "hi"}':
        assert status == 200


@pytest.mark.anyio
async def test_a_get_with_a_json_body_works_as_before() -> None:
    status, body = await same_answer("GET", "/chat/events", b'{"text": "hi"}', JSON)
    assert status == 200 and json.loads(body)["body"]["text"] == "hi"


_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.sampled_from(["final", "full", "stream", "hold", "abc_1", "a b", ""]),
)
_bodies = st.one_of(
    st.dictionaries(
        st.sampled_from(["text", "session_id", "stream", "mode", "answer_policy", "resumable", "other"]),
        _values,
        max_size=6,
    ).map(lambda d: json.dumps(d).encode()),
    st.binary(max_size=40),
    st.text(max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass")),
)


@pytest.mark.anyio
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=_bodies)
async def test_any_body_gets_what_fastapi_would_answer(content: bytes) -> None:
    await same_answer("POST", "/chat/events", content, JSON)


@pytest.fixture
def solved(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths FastAPI's general handler solved dependencies for (apps built after this)."""
    import fastapi.routing

    paths: list[str] = []
    real = fastapi.routing.solve_dependencies

    async def counting(**kw: Any) -> Any:
        paths.append(kw["request"].url.path)
        return await real(**kw)

    monkeypatch.setattr(fastapi.routing, "solve_dependencies", counting)
    return paths


@pytest.mark.anyio
async def test_a_well_formed_request_takes_the_short_path(solved: list[str]) -> None:
    """FastAPI's general handler (its dependency solver) is not run for it, and is for the rest."""
    app = make_app(LeanRoute)  # handlers are built when the router is included: after the patch
    status, _, _ = await answer(app, "POST", "/chat/events", b'{"text": "hi"}', JSON)
    assert status == 200 and solved == []
    status, _, _ = await answer(app, "POST", "/chat/events", b'{"text": 5}', JSON)
    assert status == 422 and solved == ["/chat/events"]
    status, _, _ = await answer(app, "POST", "/chat/sessions/s1", b'{"text": "hi"}', JSON)
    assert status == 200 and solved == ["/chat/events", "/chat/sessions/s1"]


@pytest.mark.anyio
async def test_dependency_overrides_are_honoured() -> None:
    app = make_app(LeanRoute)

    async def someone() -> str:
        return "someone"

    app.dependency_overrides[require_owner] = someone
    status, body, _ = await answer(app, "POST", "/chat/events", b'{"text": "hi"}', JSON)
    assert status == 200 and json.loads(body)["owner"] == "someone"


def test_only_endpoints_of_the_supported_shape_are_planned() -> None:
    planned = {}
    for route in make_router(LeanRoute).routes:
        assert isinstance(route, LeanRoute)
        planned[(route.path, *sorted(route.methods))] = lean_route._plan(route.dependant) is not None
    assert planned == {
        ("/events", "POST"): True,
        ("/events", "GET"): True,
        ("/sessions/{sid}", "POST"): False,
    }


@pytest.mark.anyio
async def test_a_request_fastapis_telemetry_records_takes_fastapis_handler(
    solved: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With OpenTelemetry configured, FastAPI records each request's body and dependencies on
    its span: such a request goes the general way, so the record stays whole."""
    monkeypatch.setattr(lean_route, "_traced", lambda: object())
    status, _, _ = await answer(make_app(LeanRoute), "POST", "/chat/events", b'{"text": "hi"}', JSON)
    assert status == 200 and solved == ["/chat/events"]
