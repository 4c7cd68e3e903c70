"""Fuzz every operation of the HTTP API from its own OpenAPI description (schemathesis), against
a real server with a ScriptedBackend: schema-valid requests (positive) and schema-violating ones
(negative). Required: never a 5xx, and every 4xx is a JSON body `{"error": {"message": ...}}`
whose message is not empty.

The number of examples per operation and mode is bounded (`EXAMPLES`), so the whole module
runs in well under a minute; `TOKENRELAY_FUZZ_EXAMPLES=500 pytest tests/server/test_fuzz_openapi.py`
digs deeper.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")

import requests  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402

from server_fixture import LiveServer, make_app  # noqa: E402
from tokenrelay.config import Settings  # noqa: E402
from tokenrelay.server.app import create_app  # noqa: E402
from tokenrelay.testing import ScriptedBackend  # noqa: E402

EXAMPLES = int(os.environ.get("TOKENRELAY_FUZZ_EXAMPLES", "20"))
KEY = "fuzz-key"
REPLY = '{"action": "Final Answer", "action_input": "fuzzed"}'

# the schema comes from the app itself (no server needed to collect the tests)
SCHEMA = schemathesis.openapi.from_dict(
    create_app(Settings(db="memory://"), backend=ScriptedBackend()).openapi()
)
OPERATIONS = [result.ok() for result in SCHEMA.get_all_operations()]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    app = make_app(tmp_path_factory.mktemp("fuzz") / "fuzz.db", ScriptedBackend([REPLY]), max_text_chars=2000)
    live = LiveServer(app)
    live._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # see test_faults.nodelay
    with live:
        yield live


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    app = make_app(
        tmp_path_factory.mktemp("fuzzkeys") / "fuzz.db", ScriptedBackend([REPLY]), api_keys=frozenset({KEY})
    )
    live = LiveServer(app)
    live._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with live:
        yield live


def check(response: Any, label: str) -> None:
    """`response` is a schemathesis Response (headers: lower-case name -> list of values)."""
    status = response.status_code
    assert status < 500, f"{label}: {status} {response.text[:300]!r}"
    if status >= 400:
        content_type = (response.headers.get("content-type") or [""])[0]
        assert content_type.startswith("application/json"), (
            f"{label}: {status} {content_type} {response.text[:200]!r}"
        )
        body = response.json()
        assert isinstance(body, dict) and isinstance(body.get("error"), dict), f"{label}: {body!r}"
        message = body["error"].get("message")
        assert isinstance(message, str) and message.strip(), f"{label}: {body!r}"


def fuzz(
    operation: Any,
    base_url: str,
    mode: Any,
    headers: dict[str, str] | None = None,
    examples: int = EXAMPLES,
    unauthorized: bool = False,
) -> int:
    calls = 0
    label = f"{operation.method.upper()} {operation.path} ({mode.value})"

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        nonlocal calls
        with requests.Session() as session:
            response = case.call(base_url=base_url, session=session, headers=headers, timeout=30)
        calls += 1
        check(response, label)
        if unauthorized:
            assert response.status_code == 401, f"{label} without a key: {response.status_code}"

    try:
        run()
    except Unsatisfiable:  # e.g. no negative request exists for an operation without inputs
        pass
    return calls


@pytest.mark.parametrize("operation", OPERATIONS, ids=[f"{o.method.upper()} {o.path}" for o in OPERATIONS])
def test_no_5xx_and_every_4xx_is_a_json_error(server: LiveServer, operation: Any) -> None:
    from schemathesis import GenerationMode

    calls = fuzz(operation, server.url, GenerationMode.POSITIVE)
    calls += fuzz(operation, server.url, GenerationMode.NEGATIVE)
    assert calls >= 1


@pytest.mark.parametrize(
    "operation",
    [o for o in OPERATIONS if o.path != "/health"],
    ids=[f"{o.method.upper()} {o.path}" for o in OPERATIONS if o.path != "/health"],
)
def test_with_api_keys_on_no_5xx_and_every_4xx_is_a_json_error(
    keyed_server: LiveServer, operation: Any
) -> None:
    """With keys on: once with a valid key (the routes behind it are reached), once without
    (every route but /health, the page and the static files must be a JSON 401)."""
    from schemathesis import GenerationMode

    key = {"Authorization": f"Bearer {KEY}"}
    assert (
        fuzz(operation, keyed_server.url, GenerationMode.POSITIVE, key, examples=max(EXAMPLES // 2, 1)) >= 1
    )
    unauthorized = operation.path != "/presets"  # the page's preset questions are public
    assert (
        fuzz(operation, keyed_server.url, GenerationMode.POSITIVE, examples=3, unauthorized=unauthorized) >= 1
    )


def test_the_schema_lists_every_route() -> None:
    paths = {(o.method.upper(), o.path) for o in OPERATIONS}
    assert {("POST", "/chat"), ("POST", "/chat/events"), ("POST", "/v1/chat/completions")} <= paths
    assert len(OPERATIONS) >= 12
