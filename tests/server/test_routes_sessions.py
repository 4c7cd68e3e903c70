"""Session routes the web page relies on, over a real server: renaming a session
(`PATCH /sessions/{id}`) and a cut document that stays cut (`document_info` on reopening, and
the model told so in its prompt)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from server_fixture import LiveServer, make_app
from tokenrelay.testing import ScriptedBackend

ANSWER = '{"action": "Final Answer", "action_input": "ok"}'


@pytest.fixture
def backend() -> ScriptedBackend:
    return ScriptedBackend([ANSWER])


@pytest.fixture
def server(tmp_path: Path, backend: ScriptedBackend) -> Iterator[LiveServer]:
    with LiveServer(make_app(tmp_path / "db.sqlite", backend, api_keys=frozenset({"alice", "bob"}))) as live:
        yield live


def client(server: LiveServer, key: str) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body["error"]) >= {"message", "type", "code"}, body
    error: dict[str, Any] = body["error"]
    return error


def test_rename_a_session(server: LiveServer) -> None:
    with client(server, "alice") as alice, client(server, "bob") as bob:
        sid = alice.post("/sessions").json()["id"]
        renamed = alice.patch(f"/sessions/{sid}", json={"title": "  設計メモ\n の要約  "})
        assert renamed.status_code == 200
        assert renamed.json()["title"] == "設計メモ の要約"  # one line, as the sidebar shows it
        assert alice.get(f"/sessions/{sid}").json()["title"] == "設計メモ の要約"
        assert [s["title"] for s in alice.get("/sessions").json()] == ["設計メモ の要約"]

        # another key's session answers like a missing one
        stolen = bob.patch(f"/sessions/{sid}", json={"title": "mine now"})
        assert stolen.status_code == 404 and sid in error_of(stolen)["message"]
        assert alice.get(f"/sessions/{sid}").json()["title"] == "設計メモ の要約"
        assert alice.patch("/sessions/s_nope", json={"title": "x"}).status_code == 404

        for bad in ({"title": ""}, {"title": "   "}, {"title": "x" * 201}, {}, {"title": 3}, {"name": "x"}):
            response = alice.patch(f"/sessions/{sid}", json=bad)
            assert response.status_code == 422, bad
            assert error_of(response)["message"]
        not_json = alice.patch(f"/sessions/{sid}", content=b"title=x", headers={"Content-Type": "text/plain"})
        assert not_json.status_code == 415
        assert httpx.patch(f"{server.url}/sessions/{sid}", json={"title": "x"}).status_code == 401


def test_a_cut_document_stays_cut_and_the_model_is_told(server: LiveServer, backend: ScriptedBackend) -> None:
    big = "".join(f"Paragraph {i}: " + "lorem ipsum dolor sit amet " * 8 + "\n\n" for i in range(300))
    with client(server, "alice") as alice:
        sid = alice.post("/sessions").json()["id"]
        attached = alice.put(f"/sessions/{sid}/document", json={"name": "big.txt", "content": big}).json()
        assert attached["truncated"] and attached["total_chars"] == len(big)

        # reopening the chat says the same as attaching did
        info = alice.get(f"/sessions/{sid}").json()["document_info"]
        assert info == attached
        assert alice.get(f"/sessions/{sid}").json()["document"] == "big.txt"

        alice.post("/chat", json={"text": "what is at the end?", "session_id": sid, "stream": False})
        system = backend.calls[-1].messages[0].content
        assert "the document was cut here" in system
        assert f"the first {attached['kept_chars']} of its {len(big)} characters" in system

        # a document that fits replaces it: nothing was left out any more
        alice.put(f"/sessions/{sid}/document", json={"name": "small.md", "content": "# Small\n\nAll here."})
        info = alice.get(f"/sessions/{sid}").json()["document_info"]
        whole = {"name": "small.md", "total_chars": 18, "kept_chars": 18, "truncated": False, "notice": None}
        assert info == whole
        alice.post("/chat", json={"text": "and now?", "session_id": sid, "stream": False})
        assert "was cut" not in backend.calls[-1].messages[0].content

        fresh = alice.post("/sessions").json()["id"]
        assert alice.get(f"/sessions/{fresh}").json()["document_info"] is None


def test_a_new_conversation_is_stored_in_one_hop(tmp_path: Path, backend: ScriptedBackend) -> None:
    """No session id: the server picks one (it goes out in X-Session-Id) and the run creates
    the session with its first turn, in one store call; it is the caller's like any other."""
    from tokenrelay.config import Settings
    from tokenrelay.memory import SQLiteSessionStore
    from tokenrelay.server.app import create_app

    store = SQLiteSessionStore(tmp_path / "db.sqlite")
    created: list[dict[str, Any]] = []
    create_session = store.create_session

    async def counted(**options: Any) -> Any:
        created.append(options)
        return await create_session(**options)

    store.create_session = counted  # type: ignore[method-assign]
    settings = Settings(db="memory://", api_keys=frozenset({"alice", "bob"}))
    app = create_app(settings, backend=backend, store=store)
    with LiveServer(app) as live, client(live, "alice") as alice, client(live, "bob") as bob:
        response = alice.post("/chat/events", json={"text": "hello"})
        assert response.status_code == 200 and "event: run_finished" in response.text
        sid = response.headers["X-Session-Id"]
        assert created == []  # no separate hop: the run's open_turn created it
        detail = alice.get(f"/sessions/{sid}").json()
        assert [(t["user_text"], t["answer"], t["status"]) for t in detail["turns"]] == [
            ("hello", "ok", "complete")
        ]
        assert bob.get(f"/sessions/{sid}").status_code == 404
        assert [s["id"] for s in alice.get("/sessions").json()] == [sid]
