"""What a server shows and to whom, over a real socket: the Host allow-list of a server
without keys (DNS rebinding), /docs, the page's framing policy, /health without a key, and
malformed notebooks (a 4xx that says what is wrong, never a 500)."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from server_fixture import LiveServer, make_app
from tokenrelay.testing import ScriptedBackend

REPLY = json.dumps({"action": "Final Answer", "action_input": "hi"})


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    servers: list[LiveServer] = []

    def start(**settings: Any) -> LiveServer:
        server = LiveServer(make_app(tmp_path / "e.db", ScriptedBackend(replies=[REPLY]), **settings)).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def _raw(server: LiveServer, host: str, path: str = "/sessions") -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


def test_a_server_without_keys_answers_only_its_own_host_names(serve: Callable[..., LiveServer]) -> None:
    server = serve()
    for host in (
        "127.0.0.1",
        f"127.0.0.1:{server.port}",
        "localhost",
        "LOCALHOST:8000",
        "[::1]:8000",
        "[::1]",
    ):
        assert _raw(server, host).startswith(b"HTTP/1.1 200"), host
    for host in ("attacker.example", "attacker.example:8000", "127.0.0.1.attacker.example", "evil"):
        answer = _raw(server, host)
        assert answer.startswith(b"HTTP/1.1 400"), host
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "host_not_allowed"


def test_more_host_names_can_be_allowed(serve: Callable[..., LiveServer]) -> None:
    server = serve(allowed_hosts=frozenset({"tokenrelay.lan"}))
    assert _raw(server, "tokenrelay.lan:8000").startswith(b"HTTP/1.1 200")
    assert _raw(server, "other.lan").startswith(b"HTTP/1.1 400")
    anyone = serve(allowed_hosts=frozenset({"*"}))
    assert _raw(anyone, "other.lan").startswith(b"HTTP/1.1 200")


def test_with_keys_the_host_is_not_checked(serve: Callable[..., LiveServer]) -> None:
    server = serve(api_keys=frozenset({"k"}))  # a key is the protection; proxies may rename hosts
    assert _raw(server, "api.example.com", "/health").startswith(b"HTTP/1.1 200")


def test_swagger_ui_is_off_by_default_and_the_description_stays(serve: Callable[..., LiveServer]) -> None:
    server = serve()
    assert httpx.get(server.url + "/docs").status_code == 404
    assert httpx.get(server.url + "/redoc").status_code == 404
    assert httpx.get(server.url + "/openapi.json").json()["info"]["title"] == "tokenrelay"
    on = serve(api_docs=True)
    assert httpx.get(on.url + "/docs").status_code == 200


def test_the_page_cannot_be_framed(serve: Callable[..., LiveServer]) -> None:
    response = httpx.get(serve().url + "/")
    assert response.status_code == 200
    policy = response.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in policy
    assert "script-src 'self'" in policy  # the page's own policy, as a header
    assert response.headers["x-frame-options"] == "DENY"


def test_health_without_a_key_is_liveness_only(serve: Callable[..., LiveServer]) -> None:
    server = serve(api_keys=frozenset({"k1", "k2"}))
    public = httpx.get(server.url + "/health")
    assert public.status_code == 200
    assert set(public.json()) == {"status", "version"}
    assert set(httpx.get(server.url + "/health", headers={"X-API-Key": "wrong"}).json()) == {
        "status",
        "version",
    }
    full = httpx.get(server.url + "/health", headers={"X-API-Key": "k1"}).json()
    assert full["model"] == "scripted" and full["active_runs"] == 0 and "worker" in full
    open_server = serve()  # no keys: the local user sees everything
    assert {"model", "active_runs", "worker"} <= set(httpx.get(open_server.url + "/health").json())


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ('{"cells": 5}', "'cells' must be a list"),
        ('{"cells": [{"source": [1, 2]}]}', "'source' must be text"),
        ('{"cells": [{"source": {"a": 1}}]}', "'source' must be text"),
        ('{"cells": ["x"]}', "cell 1 must be an object"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"nbformat": 4}', "'cells'"),
        ("not json", "not JSON"),
    ],
)
def test_a_malformed_notebook_is_a_4xx_that_says_what_is_wrong(
    serve: Callable[..., LiveServer], content: str, says: str
) -> None:
    server = serve()
    session = httpx.post(server.url + "/sessions").json()["id"]
    response = httpx.put(
        f"{server.url}/sessions/{session}/document",
        json={"name": "talk.ipynb", "content": content},
        timeout=30,
    )
    assert response.status_code == 422, response.text
    message = response.json()["error"]["message"]
    assert says in message and "talk.ipynb" in message
