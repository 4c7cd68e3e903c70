"""`GET /info` over a real server: the model, the version, the demo notice, the context window."""

from __future__ import annotations

from pathlib import Path

import httpx

from server_fixture import LiveServer, make_app
from tokenrelay.models import demo_notice
from tokenrelay.server.deps import __version__
from tokenrelay.testing import ScriptedBackend


def test_info_for_a_model_that_needs_no_notice(tmp_path: Path) -> None:
    backend = ScriptedBackend(["hi"])
    backend.context_window = 32768
    with LiveServer(make_app(tmp_path / "t.db", backend)) as server:
        response = httpx.get(server.url + "/info", timeout=30)
    assert response.status_code == 200
    assert response.json() == {
        "model": "scripted",
        "version": __version__,
        "notice": None,
        "context_window": 32768,
    }


def test_info_carries_the_demo_notice_for_the_tiny_default(tmp_path: Path) -> None:
    backend = ScriptedBackend(["hi"], name="llamacpp")  # what the default model is called
    with LiveServer(make_app(tmp_path / "t.db", backend)) as server:
        body = httpx.get(server.url + "/info", timeout=30).json()
    assert body["model"] == "llamacpp"
    assert body["notice"] == demo_notice("llamacpp")
    assert "English-only" in body["notice"] and "hf:qwen2.5-1.5b" in body["notice"]
    assert body["context_window"] is None


def test_info_is_behind_the_api_key(tmp_path: Path) -> None:
    app = make_app(tmp_path / "t.db", ScriptedBackend(["hi"]), api_keys=frozenset({"k1"}))
    with LiveServer(app) as server:
        refused = httpx.get(server.url + "/info", timeout=30)
        allowed = httpx.get(server.url + "/info", headers={"Authorization": "Bearer k1"}, timeout=30)
    assert refused.status_code == 401
    assert refused.json()["error"]["message"].startswith("a valid API key is required")
    assert allowed.status_code == 200 and allowed.json()["model"] == "scripted"
