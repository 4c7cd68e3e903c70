"""`open_turn`: a turn opened in one store call (one hop for SQLite and PostgreSQL), the same as
the `SessionStore` calls it replaces (`compose_open_turn`, the default for other stores).

Every test here takes only `store`, so test_memory_postgres.py runs them against PostgreSQL too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tokenrelay.agent.session import SessionTurn
from tokenrelay.memory import InMemorySessionStore, SQLiteSessionStore
from tokenrelay.memory.base import ANY_OWNER, OpenedTurn, Turn
from tokenrelay.memory.common import compose_open_turn

Store = SQLiteSessionStore | InMemorySessionStore


@pytest.fixture(params=["sqlite", "memory"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    s: Store = (
        SQLiteSessionStore(tmp_path / "db" / "t.db") if request.param == "sqlite" else InMemorySessionStore()
    )
    yield s
    await s.close()


async def _session_with_turns(store: Any, session_id: str, owner: str | None) -> None:
    """Five turns: complete, failed without answer, interrupted with a partial answer, complete,
    and one still running; plus a document."""
    await store.create_session(session_id=session_id, owner=owner)
    outcomes = [("complete", "a0"), ("failed", ""), ("interrupted", "part"), ("complete", "a3")]
    for i, (status, answer) in enumerate(outcomes):
        turn_id = await store.begin_turn(session_id, run_id=f"r{i}", user_text=f"q{i}")
        await store.finish_turn(turn_id, answer=answer, status=status)
    await store.begin_turn(session_id, run_id="r-running", user_text="still going")
    await store.set_document(session_id, name="doc.txt", text="the document", total_chars=99)


def _shape(turns: list[Turn]) -> list[tuple[str, str, str]]:
    return [(t.user_text, t.answer, t.status) for t in turns]


@pytest.mark.anyio
async def test_open_turn_matches_the_composed_calls(store: Store) -> None:
    await _session_with_turns(store, "one", "alice")
    await _session_with_turns(store, "composed", "alice")
    one = await store.open_turn("one", owner="alice", run_id="new", user_text="next question", window=2)
    composed = await compose_open_turn(
        store, "composed", owner="alice", run_id="new", user_text="next question", window=2
    )
    assert isinstance(one, OpenedTurn) and one.session_id == "one" and composed.session_id == "composed"
    assert (
        _shape(one.history)
        == _shape(composed.history)
        == [("q2", "part", "interrupted"), ("q3", "a3", "complete")]
    )
    assert one.document is not None and composed.document is not None
    assert dataclasses.replace(one.document, created_at=0) == dataclasses.replace(
        composed.document, created_at=0
    )
    assert one.document is not None and one.document.text == "the document" and one.document.truncated
    for sid, opened in (("one", one), ("composed", composed)):
        last = (await store.history(sid))[-1]
        assert (last.id, last.user_text, last.run_id, last.status) == (
            opened.turn_id,
            "next question",
            "new",
            "running",
        )
        info = await store.get_session(sid, owner="alice")
        assert info is not None and info.title == "q0" and info.updated_at >= last.created_at - 1e-6


@pytest.mark.anyio
async def test_open_turn_without_window_or_document(store: Store) -> None:
    await _session_with_turns(store, "s", None)
    opened = await store.open_turn("s", run_id="r", user_text="hi", window=0, document=False)
    assert opened.history == [] and opened.document is None
    with pytest.raises(ValueError):
        await store.open_turn("s", run_id="r", user_text="hi", window=-1)


@pytest.mark.anyio
async def test_open_turn_creates_a_session_of_the_owner(store: Store) -> None:
    opened = await store.open_turn(None, owner="bob", run_id="r1", user_text="  first   words  ", window=5)
    assert opened.session_id.startswith("s_") and opened.history == [] and opened.document is None
    info = await store.get_session(opened.session_id, owner="bob")
    assert info is not None and info.title == "first words"
    assert await store.get_session(opened.session_id, owner=None) is None
    (turn,) = await store.history(opened.session_id)
    assert (turn.id, turn.status, turn.user_text) == (opened.turn_id, "running", "  first   words  ")
    other = await store.open_turn(None, owner=ANY_OWNER, run_id="r2", user_text="x")
    assert other.session_id != opened.session_id
    assert await store.get_session(other.session_id, owner=None) is not None


@pytest.mark.anyio
async def test_open_turn_creates_the_session_it_is_given(store: Store) -> None:
    """`create=True`: the server's new conversation, its id chosen up front (it goes out in the
    response headers), created with the first turn in one call."""
    opened = await store.open_turn("s_new", owner="bob", run_id="r1", user_text="hello", create=True)
    assert (opened.session_id, opened.history, opened.document) == ("s_new", [], None)
    info = await store.get_session("s_new", owner="bob")
    assert info is not None and info.title == "hello"
    assert await store.get_session("s_new", owner=None) is None
    assert [t.id for t in await store.history("s_new")] == [opened.turn_id]
    with pytest.raises(ValueError, match="already exists"):  # never a second owner's turn in it
        await store.open_turn("s_new", owner="eve", run_id="r2", user_text="mine now?", create=True)
    assert [t.id for t in await store.history("s_new")] == [opened.turn_id]
    assert (await store.get_session("s_new", owner="bob")) is not None


@pytest.mark.anyio
async def test_open_turn_keeps_sessions_to_their_owner(store: Store) -> None:
    await store.create_session(session_id="mine", owner="alice")
    for owner in ("bob", None):
        with pytest.raises(KeyError):
            await store.open_turn("mine", owner=owner, run_id="r", user_text="intrude")
    with pytest.raises(KeyError):
        await store.open_turn("missing", owner=ANY_OWNER, run_id="r", user_text="hello")
    assert await store.history("mine") == []
    opened = await store.open_turn("mine", owner=ANY_OWNER, run_id="r", user_text="checked by the caller")
    assert [t.id for t in await store.history("mine")] == [opened.turn_id]


@pytest.mark.anyio
async def test_session_turn_works_with_a_store_without_open_turn(store: Store) -> None:
    """A third-party store keeping to `SessionStore` only: `SessionTurn` composes the calls."""

    class Plain:
        def __init__(self, inner: Store) -> None:
            self._inner = inner

        def __getattr__(self, name: str) -> Any:
            if name == "open_turn":
                raise AttributeError(name)
            return getattr(self._inner, name)

    await _session_with_turns(store, "s", None)
    turn = SessionTurn(Plain(store), "s", run_id="run", memory_k=5)  # type: ignore[arg-type]
    await turn.open("question")
    assert turn.pairs == [("q0", "a0"), ("q2", "part [interrupted]"), ("q3", "a3")]
    assert (turn.document or "").startswith("the document\n\n[NOTE: the document was cut")
    await turn.finish("complete", "answer")
    last = (await store.history("s"))[-1]
    assert (last.user_text, last.answer, last.status) == ("question", "answer", "complete")
