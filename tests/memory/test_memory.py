"""Session stores: every behavioural test runs against SQLite (a real file) and the in-memory store."""

from __future__ import annotations

import asyncio
import inspect
import sqlite3
import sys
import types
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from tokenrelay.errors import ConfigError
from tokenrelay.memory import (
    InMemorySessionStore,
    SessionStore,
    SQLiteSessionStore,
    TurnStatus,
    open_store,
    sqlite_path_from_url,
)
from tokenrelay.memory.base import SessionInfo
from tokenrelay.memory.sqlite import MIGRATIONS, RECOVERED_ERROR, apply_migrations

Store = SQLiteSessionStore | InMemorySessionStore


@pytest.fixture(params=["sqlite", "memory"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    s: Store = (
        SQLiteSessionStore(tmp_path / "db" / "t.db") if request.param == "sqlite" else InMemorySessionStore()
    )
    yield s
    await s.close()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "tokenrelay.db"


@pytest.fixture
def raw(db_path: Path) -> Iterator[Callable[[], sqlite3.Connection]]:
    """Open plain sqlite3 connections on `db_path` (closed at teardown)."""
    opened: list[sqlite3.Connection] = []

    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(db_path, isolation_level=None)
        opened.append(conn)
        return conn

    yield connect
    for conn in opened:
        conn.close()


def test_both_stores_satisfy_the_protocol() -> None:
    """Every method of `SessionStore` is on both stores, async, taking the protocol's
    parameters (same names, kinds and defaults; a store may accept more, with defaults)."""
    members = [name for name, value in vars(SessionStore).items() if inspect.iscoroutinefunction(value)]
    assert {"begin_turn", "finish_turn", "update_partial", "history", "close"} <= set(members)
    sqlite_store = SQLiteSessionStore(":memory:")
    try:
        for store in (InMemorySessionStore(), sqlite_store):
            for name in members:
                method = getattr(store, name)
                assert inspect.iscoroutinefunction(method), (type(store).__name__, name)
                wanted = list(inspect.signature(getattr(SessionStore, name)).parameters.values())[1:]
                given = inspect.signature(method).parameters
                for param in wanted:
                    assert param.name in given, (type(store).__name__, name, param.name)
                    assert (given[param.name].kind, given[param.name].default) == (param.kind, param.default)
                extra = [p for p in given.values() if p.name not in {w.name for w in wanted}]
                assert all(p.default is not inspect.Parameter.empty for p in extra), (name, extra)
    finally:
        asyncio.run(sqlite_store.close())


# --------------------------------------------------------------------------- sessions


@pytest.mark.anyio
async def test_create_get_list_delete(store: Store) -> None:
    a = await store.create_session(title="first")
    b = await store.create_session()
    assert a.id != b.id
    assert a.id.startswith("s_") and len(a.id) >= 20
    assert a.title == "first" and b.title == ""
    assert a.owner is None and a.created_at == a.updated_at

    assert await store.get_session(a.id) == a
    assert await store.get_session("s_missing") is None
    assert {s.id for s in await store.list_sessions()} == {a.id, b.id}

    assert await store.delete_session(a.id) is True
    assert await store.delete_session(a.id) is False
    assert await store.get_session(a.id) is None
    assert [s.id for s in await store.list_sessions()] == [b.id]


@pytest.mark.anyio
async def test_explicit_session_id_and_duplicates(store: Store) -> None:
    info = await store.create_session(session_id="mine", owner="alice")
    assert info.id == "mine"
    with pytest.raises(ValueError, match="already exists"):
        await store.create_session(session_id="mine", owner="alice")
    with pytest.raises(ValueError, match="already exists"):
        await store.create_session(session_id="mine", owner="bob")
    with pytest.raises(ValueError):
        await store.create_session(session_id="")


@pytest.mark.anyio
async def test_session_ids_are_unguessable(store: Store) -> None:
    ids = {(await store.create_session()).id for _ in range(50)}
    assert len(ids) == 50
    assert all(i.startswith("s_") and len(i) == 2 + 22 for i in ids)


@pytest.mark.anyio
async def test_list_is_most_recently_updated_first_and_limited(store: Store) -> None:
    a = await store.create_session()
    b = await store.create_session()
    c = await store.create_session()
    assert [s.id for s in await store.list_sessions()] == [c.id, b.id, a.id]
    await asyncio.sleep(0.002)  # distinct timestamps even on a coarse clock
    await store.begin_turn(a.id, run_id="r", user_text="hi")
    listed = await store.list_sessions()
    assert [s.id for s in listed] == [a.id, c.id, b.id]
    assert listed[0].updated_at > listed[0].created_at
    assert [s.id for s in await store.list_sessions(limit=2)] == [a.id, c.id]
    assert await store.list_sessions(limit=0) == []
    with pytest.raises(ValueError):
        await store.list_sessions(limit=-1)


@pytest.mark.anyio
async def test_sessions_page_after_a_cursor_and_are_counted(store: Store) -> None:
    """Keyset paging for GET /sessions: each session once, most recent first, ties on
    updated_at broken by creation order; a cursor of another owner gives nothing."""
    ids = [(await store.create_session(owner="o")).id for _ in range(7)]
    page1 = await store.list_sessions(owner="o", limit=3)
    page2 = await store.list_sessions(owner="o", limit=3, after=page1[-1].id)
    page3 = await store.list_sessions(owner="o", limit=3, after=page2[-1].id)
    assert [s.id for s in page1 + page2 + page3] == ids[::-1]
    assert await store.list_sessions(owner="other", after=ids[0]) == []
    assert await store.list_sessions(owner="o", after="s_missing") == []
    assert await store.count_sessions(owner="o") == 7
    assert await store.count_sessions() == 0


@pytest.mark.anyio
async def test_ownership_isolation(store: Store) -> None:
    alice = await store.create_session(owner="alice")
    anon = await store.create_session()

    assert await store.get_session(alice.id, owner="alice") == alice
    assert await store.get_session(alice.id, owner="bob") is None
    assert await store.get_session(alice.id) is None  # owner None sees only owner-less sessions
    assert await store.get_session(anon.id, owner="alice") is None
    assert await store.get_session(anon.id) == anon

    assert [s.id for s in await store.list_sessions(owner="alice")] == [alice.id]
    assert await store.list_sessions(owner="bob") == []
    assert [s.id for s in await store.list_sessions()] == [anon.id]

    assert await store.delete_session(alice.id, owner="bob") is False
    assert await store.delete_session(alice.id) is False
    assert await store.delete_session(anon.id, owner="alice") is False
    assert await store.get_session(alice.id, owner="alice") == alice
    assert await store.delete_session(alice.id, owner="alice") is True


# --------------------------------------------------------------------------- turns


@pytest.mark.anyio
@pytest.mark.parametrize("status", ["complete", "interrupted", "failed"])
async def test_begin_and_finish_turn(store: Store, status: TurnStatus) -> None:
    s = await store.create_session()
    turn_id = await store.begin_turn(s.id, run_id="run-1", user_text="What is 2+2?")
    [running] = await store.history(s.id)
    assert running.id == turn_id
    assert (running.session_id, running.run_id, running.user_text) == (s.id, "run-1", "What is 2+2?")
    assert (running.answer, running.status, running.error, running.finished_at) == ("", "running", None, None)

    error = None if status == "complete" else f"{status}!"
    await store.finish_turn(turn_id, answer="4", status=status, error=error)
    [done] = await store.history(s.id)
    assert (done.id, done.answer, done.status, done.error) == (turn_id, "4", status, error)
    assert done.finished_at is not None and done.finished_at >= done.created_at
    assert done.created_at == running.created_at


@pytest.mark.anyio
async def test_finish_turn_needs_a_final_status(store: Store) -> None:
    s = await store.create_session()
    turn_id = await store.begin_turn(s.id, run_id="r", user_text="q")
    with pytest.raises(ValueError, match="final status"):
        await store.finish_turn(turn_id, answer="a", status="running")
    assert (await store.history(s.id))[0].status == "running"


@pytest.mark.anyio
async def test_begin_turn_on_missing_session_raises_key_error(store: Store) -> None:
    with pytest.raises(KeyError):
        await store.begin_turn("s_missing", run_id="r", user_text="hello")


@pytest.mark.anyio
async def test_finish_or_update_of_missing_turn_is_a_no_op(store: Store) -> None:
    s = await store.create_session()
    turn_id = await store.begin_turn(s.id, run_id="r", user_text="q")
    await store.update_partial(turn_id, "partial")
    before = await store.history(s.id)
    missing = turn_id + 12345
    assert await store.finish_turn(missing, answer="x", status="complete") is None  # no error
    assert await store.update_partial(missing, "x") is None
    assert await store.history(s.id) == before  # nothing else changed, nothing was created
    assert [(t.id, t.answer, t.status) for t in before] == [(turn_id, "partial", "running")]
    assert await store.interrupt_run("r", error="stopped")  # the real turn is still running


@pytest.mark.anyio
async def test_history_window(store: Store) -> None:
    s = await store.create_session()
    other = await store.create_session()
    for i in range(5):
        tid = await store.begin_turn(s.id, run_id=f"r{i}", user_text=f"q{i}")
        await store.finish_turn(tid, answer=f"a{i}", status="complete")
        await store.begin_turn(other.id, run_id=f"o{i}", user_text=f"other{i}")

    assert [t.user_text for t in await store.history(s.id)] == [f"q{i}" for i in range(5)]
    assert [t.user_text for t in await store.history(s.id, limit=2)] == ["q3", "q4"]
    assert [t.answer for t in await store.history(s.id, limit=3)] == ["a2", "a3", "a4"]
    assert len(await store.history(s.id, limit=50)) == 5
    assert await store.history(s.id, limit=0) == []
    assert await store.history("s_missing") == []
    ids = [t.id for t in await store.history(s.id)]
    assert ids == sorted(ids)
    with pytest.raises(ValueError):
        await store.history(s.id, limit=-1)


@pytest.mark.anyio
async def test_the_answered_window_skips_turns_without_an_answer(store: Store) -> None:
    """The memory window holds the last k turns that have an answer: failed, empty and still
    running turns do not take a place in it (they pushed real turns out before)."""
    s = await store.create_session()
    for i in range(3):
        tid = await store.begin_turn(s.id, run_id=f"r{i}", user_text=f"q{i}")
        await store.finish_turn(tid, answer=f"a{i}", status="complete")
    tid = await store.begin_turn(s.id, run_id="cut", user_text="cut short")
    await store.finish_turn(tid, answer="half an ans", status="interrupted", error="client left")
    for i in range(5):
        tid = await store.begin_turn(s.id, run_id=f"f{i}", user_text=f"fail{i}")
        await store.finish_turn(tid, answer="", status="failed", error="backend down")
    tid = await store.begin_turn(s.id, run_id="empty", user_text="nothing")
    await store.finish_turn(tid, answer="", status="interrupted")
    for i in range(6):  # concurrent runs of the same session, still going
        await store.begin_turn(s.id, run_id=f"live{i}", user_text=f"live{i}")

    window = await store.history(s.id, limit=3, answered=True)
    assert [(t.user_text, t.answer, t.status) for t in window] == [
        ("q1", "a1", "complete"),
        ("q2", "a2", "complete"),
        ("cut short", "half an ans", "interrupted"),
    ]
    assert [t.user_text for t in await store.history(s.id, limit=50, answered=True)] == [
        "q0", "q1", "q2", "cut short",
    ]  # fmt: skip
    assert await store.history(s.id, limit=0, answered=True) == []
    assert len(await store.history(s.id)) == 16  # the whole history still has every turn
    assert [t.user_text for t in await store.history(s.id, limit=2)] == ["live4", "live5"]


@pytest.mark.anyio
async def test_a_finished_turn_is_never_rewritten(store: Store) -> None:
    s = await store.create_session()
    tid = await store.begin_turn(s.id, run_id="r", user_text="q")
    await store.finish_turn(tid, answer="final", status="complete")
    [before] = await store.history(s.id)

    await store.finish_turn(tid, answer="late", status="failed", error="late writer")
    await store.update_partial(tid, "late partial")
    assert await store.recover_running() == 0
    assert await store.history(s.id) == [before]


@pytest.mark.anyio
async def test_update_partial(store: Store) -> None:
    s = await store.create_session()
    tid = await store.begin_turn(s.id, run_id="r", user_text="q")
    await store.update_partial(tid, "The ans")
    [t] = await store.history(s.id)
    assert (t.answer, t.status) == ("The ans", "running")
    await store.update_partial(tid, "The answer is")
    assert (await store.history(s.id))[0].answer == "The answer is"
    await store.finish_turn(tid, answer="The answer is 4.", status="complete")
    assert (await store.history(s.id))[0].answer == "The answer is 4."


@pytest.mark.anyio
async def test_recover_running(store: Store) -> None:
    s = await store.create_session()
    done = await store.begin_turn(s.id, run_id="r1", user_text="q1")
    await store.finish_turn(done, answer="a1", status="complete")
    with_partial = await store.begin_turn(s.id, run_id="r2", user_text="q2")
    await store.update_partial(with_partial, "half an ans")
    empty = await store.begin_turn(s.id, run_id="r3", user_text="q3")

    assert await store.recover_running() == 2
    t1, t2, t3 = await store.history(s.id)
    assert (t1.id, t1.status, t1.answer, t1.error) == (done, "complete", "a1", None)
    assert (t2.id, t2.status, t2.answer, t2.error) == (
        with_partial,
        "interrupted",
        "half an ans",
        RECOVERED_ERROR,
    )
    assert (t3.id, t3.status, t3.answer, t3.error) == (empty, "interrupted", "", RECOVERED_ERROR)
    assert t2.finished_at is not None and t3.finished_at is not None

    # the run's original writer, arriving late, changes nothing
    await store.finish_turn(with_partial, answer="full answer", status="complete")
    assert (await store.history(s.id))[1] == t2
    assert await store.recover_running() == 0


@pytest.mark.anyio
async def test_title_from_first_message(store: Store) -> None:
    s = await store.create_session()
    long_text = "  Explain\nthe   difference between\tTCP and UDP " + "in great detail " * 10
    await store.begin_turn(s.id, run_id="r", user_text=long_text)
    info = await store.get_session(s.id)
    assert info is not None
    assert info.title == "Explain the difference between TCP and UDP in great detail i"
    assert len(info.title) == 60 and "\n" not in info.title

    await store.begin_turn(s.id, run_id="r2", user_text="second question")
    info2 = await store.get_session(s.id)
    assert info2 is not None and info2.title == info.title

    titled = await store.create_session(title="My chat")
    await store.begin_turn(titled.id, run_id="r", user_text="hello")
    info3 = await store.get_session(titled.id)
    assert info3 is not None and info3.title == "My chat"


@pytest.mark.anyio
async def test_documents(store: Store) -> None:
    s = await store.create_session()
    assert await store.get_document(s.id) is None
    await store.set_document(s.id, name="notes.txt", text="The sky is green here.")
    doc = await store.get_document(s.id)
    assert doc is not None and (doc.name, doc.text) == ("notes.txt", "The sky is green here.")
    await store.set_document(s.id, name="other.md", text="# replaced")
    doc2 = await store.get_document(s.id)
    assert doc2 is not None and (doc2.name, doc2.text) == ("other.md", "# replaced")
    assert doc2.created_at >= doc.created_at
    with pytest.raises(KeyError):
        await store.set_document("s_missing", name="x", text="y")
    assert await store.get_document("s_missing") is None


@pytest.mark.anyio
async def test_a_cut_document_keeps_what_was_left_out(store: Store) -> None:
    s = await store.create_session()
    await store.set_document(
        s.id, name="big.md", text="# Head\n\nfirst part", total_chars=500, total_tokens=120, budget_tokens=30
    )
    doc = await store.get_document(s.id)
    assert doc is not None
    assert (doc.total_chars, doc.total_tokens, doc.budget_tokens) == (500, 120, 30)
    assert doc.truncated
    prompt = doc.prompt_text()  # the model is told the document was cut, where it was cut
    assert prompt.startswith("# Head\n\nfirst part\n\n[NOTE: the document was cut here")
    assert "first 18 of its 500 characters" in prompt
    # replaced by a document that fits: no cut any more
    await store.set_document(s.id, name="small.md", text="all of it", total_chars=9)
    whole = await store.get_document(s.id)
    assert whole is not None and not whole.truncated and whole.prompt_text() == "all of it"
    assert (whole.total_tokens, whole.budget_tokens) == (None, None)


@pytest.mark.anyio
async def test_set_title(store: Store) -> None:
    s = await store.create_session(owner="alice")
    renamed = await store.set_title(s.id, "ストリーミングの設計", owner="alice")
    assert renamed is not None and renamed.title == "ストリーミングの設計"
    assert renamed.updated_at == s.updated_at  # renaming does not reorder the list
    got = await store.get_session(s.id, owner="alice")
    assert got is not None and got.title == "ストリーミングの設計"
    assert await store.set_title(s.id, "stolen", owner="mallory") is None  # another owner's: missing
    assert await store.set_title(s.id, "stolen") is None
    assert await store.set_title("s_missing", "x", owner="alice") is None
    got = await store.get_session(s.id, owner="alice")
    assert got is not None and got.title == "ストリーミングの設計"
    # a titled session keeps its title when the first question comes
    await store.begin_turn(s.id, run_id="r", user_text="このドキュメントを要約してください")
    got = await store.get_session(s.id, owner="alice")
    assert got is not None and got.title == "ストリーミングの設計"


@pytest.mark.anyio
async def test_delete_cascades_to_turns_and_document(store: Store) -> None:
    s = await store.create_session()
    keep = await store.create_session()
    for i in range(3):
        await store.begin_turn(s.id, run_id=f"r{i}", user_text=f"q{i}")
    kept_turn = await store.begin_turn(keep.id, run_id="k", user_text="keep me")
    await store.set_document(s.id, name="d", text="t")
    await store.set_document(keep.id, name="d2", text="t2")

    assert await store.delete_session(s.id) is True
    assert await store.history(s.id) == []
    assert await store.get_document(s.id) is None
    assert [t.id for t in await store.history(keep.id)] == [kept_turn]
    assert await store.get_document(keep.id) is not None
    if isinstance(store, SQLiteSessionStore):
        assert isinstance(store.path, Path)
        with closing(sqlite3.connect(store.path)) as conn:
            assert conn.execute("SELECT count(*) FROM turns WHERE session_id = ?", (s.id,)).fetchone() == (0,)
            assert conn.execute("SELECT count(*) FROM documents").fetchone() == (1,)


@pytest.mark.anyio
async def test_integrity_check(store: Store) -> None:
    s = await store.create_session()
    await store.begin_turn(s.id, run_id="r", user_text="q")
    assert await store.integrity_check() == "ok"


@pytest.mark.anyio
async def test_concurrent_sessions_keep_their_own_turns_in_order(store: Store) -> None:
    sessions = [await store.create_session(owner=f"user{i % 3}") for i in range(50)]

    async def converse(index: int, session_id: str) -> None:
        for j in range(10):
            tid = await store.begin_turn(session_id, run_id=f"{index}-{j}", user_text=f"q {index}-{j}")
            await store.update_partial(tid, f"a {index}-")
            await asyncio.sleep(0)
            await store.finish_turn(tid, answer=f"a {index}-{j}", status="complete")

    await asyncio.gather(*(converse(i, s.id) for i, s in enumerate(sessions)))

    for i, s in enumerate(sessions):
        turns = await store.history(s.id)
        assert [t.user_text for t in turns] == [f"q {i}-{j}" for j in range(10)]
        assert [t.answer for t in turns] == [f"a {i}-{j}" for j in range(10)]
        assert {t.session_id for t in turns} == {s.id}
        assert all(t.status == "complete" for t in turns)
    assert await store.integrity_check() == "ok"


# --------------------------------------------------------------------------- SQLite only


async def fill_and_close(store: Any) -> SessionInfo:
    """A session of alice with a complete turn, a running one with a checkpoint and a
    document; then the store is closed (as a server stopping, or crashing mid-run)."""
    s: SessionInfo = await store.create_session(owner="alice")
    tid = await store.begin_turn(s.id, run_id="r", user_text="remember me")
    await store.finish_turn(tid, answer="I will", status="complete")
    running = await store.begin_turn(s.id, run_id="r2", user_text="crash here")
    await store.update_partial(running, "partial")
    await store.set_document(s.id, name="n", text="doc")
    await store.close()
    return s


async def check_reopened(reopened: Any, s: SessionInfo) -> None:
    """What `fill_and_close` left is all there, and the running turn is recovered."""
    turns = await reopened.history(s.id)
    assert [(t.user_text, t.answer, t.status) for t in turns] == [
        ("remember me", "I will", "complete"),
        ("crash here", "partial", "running"),
    ]
    doc = await reopened.get_document(s.id)
    assert doc is not None and doc.text == "doc"
    assert await reopened.recover_running() == 1
    assert (await reopened.history(s.id))[1].status == "interrupted"


@pytest.mark.anyio
async def test_persistence_across_close_and_reopen(db_path: Path) -> None:
    store = SQLiteSessionStore(db_path)
    s = await fill_and_close(store)
    await store.close()  # idempotent

    reopened = SQLiteSessionStore(db_path)
    try:
        assert (
            await reopened.get_session(s.id, owner="alice")
            == (await reopened.list_sessions(owner="alice"))[0]
        )
        await check_reopened(reopened, s)
    finally:
        await reopened.close()


@pytest.mark.anyio
async def test_closed_store_refuses_work(db_path: Path) -> None:
    store = SQLiteSessionStore(db_path)
    await store.close()
    with pytest.raises(RuntimeError, match="closed"):
        await store.create_session()


@pytest.mark.anyio
async def test_memory_sqlite_database() -> None:
    store = SQLiteSessionStore(":memory:")
    assert store.path == ":memory:"
    try:
        s = await store.create_session()
        await store.begin_turn(s.id, run_id="r", user_text="hi")
        assert len(await store.history(s.id)) == 1
        assert await store.integrity_check() == "ok"
    finally:
        await store.close()


@pytest.mark.anyio
async def test_pragmas_and_schema(db_path: Path, raw: Callable[[], sqlite3.Connection]) -> None:
    store = SQLiteSessionStore(db_path)
    try:
        assert db_path.parent.is_dir()

        def pragmas(conn: sqlite3.Connection) -> tuple[Any, ...]:
            return tuple(
                conn.execute(f"PRAGMA {name}").fetchone()[0]
                for name in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
            )

        assert await store._read(pragmas) == ("wal", 1, 1, 5000)
        conn = raw()
        indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert {"turns_by_session", "sessions_by_owner"} <= indexes
        with pytest.raises(sqlite3.IntegrityError):  # the CHECK constraint on status
            conn.execute(
                "INSERT INTO sessions (id, owner, title, created_at, updated_at) VALUES ('x', NULL, '', 0, 0)"
            )
            conn.execute(
                "INSERT INTO turns (session_id, run_id, user_text, status, created_at)"
                " VALUES ('x', 'r', 'u', 'bogus', 0)"
            )
    finally:
        await store.close()


@pytest.mark.anyio
async def test_migrations_are_recorded_and_not_reapplied(
    db_path: Path, raw: Callable[[], sqlite3.Connection]
) -> None:
    await SQLiteSessionStore(db_path).close()
    conn = raw()
    first = conn.execute("SELECT name, applied_at FROM _migrations ORDER BY name").fetchall()
    assert [name for name, _ in first] == [name for name, _ in MIGRATIONS]

    store = SQLiteSessionStore(db_path)  # re-open: nothing to do
    await store.close()
    assert conn.execute("SELECT name, applied_at FROM _migrations ORDER BY name").fetchall() == first
    assert apply_migrations(conn) == []


@pytest.mark.anyio
async def test_a_file_with_only_the_first_migration_is_upgraded(
    db_path: Path, raw: Callable[[], sqlite3.Connection]
) -> None:
    db_path.parent.mkdir(parents=True)
    conn = raw()
    assert apply_migrations(conn, MIGRATIONS[:1]) == [MIGRATIONS[0][0]]
    conn.execute(
        "INSERT INTO sessions (id, owner, title, created_at, updated_at) VALUES ('old', 'alice', 't', 1, 1)"
    )
    indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "turns_by_session" not in indexes

    store = SQLiteSessionStore(db_path)
    try:
        names = [row[0] for row in conn.execute("SELECT name FROM _migrations ORDER BY name")]
        assert names == [name for name, _ in MIGRATIONS]
        indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert {"turns_by_session", "sessions_by_owner"} <= indexes
        old = await store.get_session("old", owner="alice")  # existing data survives the upgrade
        assert old is not None and old.title == "t"
        await store.set_document("old", name="n.md", text="kept")  # the document columns exist
        doc = await store.get_document("old")
        assert doc is not None and doc.total_chars is None and not doc.truncated
    finally:
        await store.close()


def test_a_failing_migration_leaves_nothing_behind(
    db_path: Path, raw: Callable[[], sqlite3.Connection]
) -> None:
    db_path.parent.mkdir(parents=True)
    conn = raw()

    def broken(c: sqlite3.Connection) -> None:
        c.execute("CREATE TABLE half_done (x INTEGER)")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        apply_migrations(conn, [*MIGRATIONS, ("9999_broken", broken)])
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables.isdisjoint({"sessions", "half_done", "_migrations"})


@pytest.mark.anyio
async def test_two_stores_on_one_file_interleave_writes(db_path: Path) -> None:
    first = SQLiteSessionStore(db_path)
    second = SQLiteSessionStore(db_path)
    try:
        shared = await first.create_session(owner="alice")
        assert await second.get_session(shared.id, owner="alice") == shared

        async def writer(store: SQLiteSessionStore, name: str) -> None:
            own = await store.create_session(owner=name)
            for j in range(20):
                for sid in (own.id, shared.id):
                    tid = await store.begin_turn(sid, run_id=f"{name}-{j}", user_text=f"{name} {j}")
                    await store.finish_turn(tid, answer=f"{name} answer {j}", status="complete")

        await asyncio.gather(*(writer(first, "w1"), writer(second, "w2"), writer(first, "w3")))

        turns = await second.history(shared.id)
        assert len(turns) == 60
        for name in ("w1", "w2", "w3"):
            assert [t.user_text for t in turns if t.run_id.startswith(name)] == [
                f"{name} {j}" for j in range(20)
            ]
        assert [t.id for t in turns] == sorted(t.id for t in turns)
        assert len({t.id for t in turns}) == 60
        for name in ("w1", "w2", "w3"):
            [own] = await first.list_sessions(owner=name)
            assert len(await second.history(own.id)) == 20
        assert await first.integrity_check() == "ok"
        assert await second.integrity_check() == "ok"
    finally:
        await first.close()
        await second.close()


@pytest.mark.anyio
async def test_a_write_waits_for_another_connection_lock(
    db_path: Path, raw: Callable[[], sqlite3.Connection]
) -> None:
    """Another process holding the write lock makes us wait (busy timeout), not fail."""
    store = SQLiteSessionStore(db_path)
    try:
        other = raw()
        other.execute("BEGIN IMMEDIATE")
        task = asyncio.create_task(store.create_session(title="waited"))
        await asyncio.sleep(0.3)
        assert not task.done()
        other.execute("COMMIT")
        info = await asyncio.wait_for(task, 5)
        assert info.title == "waited"
    finally:
        await store.close()


@pytest.mark.anyio
async def test_the_event_loop_is_not_blocked(db_path: Path) -> None:
    store = SQLiteSessionStore(db_path)
    try:
        store._lock.acquire()  # the store's worker thread now blocks on the lock
        try:
            task = asyncio.create_task(store.create_session())
            ticks = 0
            for _ in range(5):
                await asyncio.sleep(0.01)
                ticks += 1
            assert ticks == 5 and not task.done()
        finally:
            store._lock.release()
        await asyncio.wait_for(task, 5)
    finally:
        await store.close()


# --------------------------------------------------------------------------- open_store


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:////abs/dir/t.db", "/abs/dir/t.db"),
        ("sqlite:///relative/t.db", "relative/t.db"),
        ("sqlite:///t.db", "t.db"),
        ("sqlite://", ":memory:"),
        ("sqlite://:memory:", ":memory:"),
        ("sqlite:///:memory:", ":memory:"),
        ("/plain/abs.db", "/plain/abs.db"),
        ("plain.db", "plain.db"),
        ("~/x.db", "~/x.db"),
        ("sqlite://host/t.db", None),
        ("sqlite:///", None),
        ("mysql://u@h/db", None),
        ("", None),
    ],
)
def test_sqlite_path_from_url(url: str, path: str | None) -> None:
    assert sqlite_path_from_url(url) == path


@pytest.mark.anyio
async def test_open_store_sqlite_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    absolute = tmp_path / "abs" / "a.db"
    for url, expected in [
        ("sqlite:///" + str(absolute), absolute),  # what config.default_db_url() produces
        ("sqlite:///rel/r.db", tmp_path / "rel" / "r.db"),
        (str(tmp_path / "plain" / "p.db"), tmp_path / "plain" / "p.db"),
        ("plain2.db", tmp_path / "plain2.db"),
    ]:
        store = open_store(url)
        try:
            assert isinstance(store, SQLiteSessionStore)
            await store.create_session()
        finally:
            await store.close()
        assert expected.is_file(), url

    for url in ("sqlite://:memory:", "sqlite:///:memory:", "sqlite://"):
        store = open_store(url)
        assert isinstance(store, SQLiteSessionStore) and store.path == ":memory:"
        await store.close()


@pytest.mark.anyio
async def test_open_store_memory() -> None:
    store = open_store("memory://")
    assert isinstance(store, InMemorySessionStore)
    await store.close()


def test_open_store_unsupported_urls_hide_passwords() -> None:
    with pytest.raises(ConfigError, match="unsupported database URL") as info:
        open_store("mysql://user:s3cret@db.example/app")
    assert "s3cret" not in str(info.value)
    assert "mysql://user:***@db.example/app" in str(info.value)
    for url in ("redis://localhost", "", "sqlite://host/x.db"):
        with pytest.raises(ConfigError, match="sqlite:///path or postgresql://"):
            open_store(url)


def test_open_store_unopenable_file_is_a_config_error(tmp_path: Path) -> None:
    not_a_db = tmp_path / "garbage.db"
    not_a_db.write_bytes(b"this is not a sqlite database at all" * 100)
    with pytest.raises(ConfigError, match="cannot open the session database"):
        open_store(str(not_a_db))


def test_open_store_postgres_without_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tokenrelay.memory.postgres", None)  # import fails
    with pytest.raises(ConfigError, match=r"pip install 'tokenrelay\[postgres\]'"):
        open_store("postgresql://user:pw@localhost/db")


def test_open_store_postgres_is_imported_lazily(monkeypatch: pytest.MonkeyPatch) -> None:
    created: list[str] = []

    class FakePostgresStore:
        def __init__(self, url: str) -> None:
            created.append(url)

    fake = types.ModuleType("tokenrelay.memory.postgres")
    fake.PostgresSessionStore = FakePostgresStore  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tokenrelay.memory.postgres", fake)
    store = open_store("postgresql://localhost/db")
    assert isinstance(store, FakePostgresStore)
    assert open_store("postgres://localhost/db2") is not store
    assert created == ["postgresql://localhost/db", "postgres://localhost/db2"]
