"""`PostgresSessionStore` against a real PostgreSQL server.

The server is `$TOKENRELAY_TEST_POSTGRES_URL` (default: postgres, then root, at
127.0.0.1:5432/test). The module creates a throwaway database `tokenrelay_test_<random>` and
drops it at the end; each test gets a fresh schema of its own in it (through `search_path`
in the URL, which also proves a shared database is fine). Without a reachable server the
module is skipped, unless `$CI` is set: CI must provide PostgreSQL, so there it fails.

The behavioural tests of `test_memory.py` and `test_open_turn.py` are imported and run here
against Postgres (pytest collects them in this module, where `store` is the fixture below);
the tests after them are Postgres-specific: errors, migrations, several workers,
`recover_running(older_than_s=...)`.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from urllib.parse import quote, urlsplit, urlunsplit

import pytest

try:
    import psycopg
    from psycopg import sql
except ImportError:  # the `postgres` extra is not installed
    if os.environ.get("CI"):
        raise
    pytest.skip("needs the postgres extra: pip install -e '.[postgres]'", allow_module_level=True)

import test_memory
import test_open_turn

from tokenrelay.errors import ConfigError
from tokenrelay.memory import SessionStore, open_store
from tokenrelay.memory.postgres import MIGRATIONS, TABLES, PostgresSessionStore, apply_migrations
from tokenrelay.memory.sqlite import RECOVERED_ERROR

pytestmark = pytest.mark.services

# Every behavioural test of test_memory.py (those taking the `store` fixture and nothing else
# but their parametrized arguments) runs here too, with the Postgres `store` fixture below:
# pytest collects them as tests of this module.


def _is_shared(fn: object) -> bool:
    if not callable(fn):
        return False
    params = set(inspect.signature(fn).parameters)
    parametrized: set[str] = set()
    for mark in getattr(fn, "pytestmark", []):
        if mark.name == "parametrize":
            names = mark.args[0]
            parametrized.update(n.strip() for n in (names.split(",") if isinstance(names, str) else names))
    return "store" in params and params <= {"store", *parametrized}


_SHARED_FROM = (test_memory, test_open_turn)
_SHARED = {
    name: fn
    for module in _SHARED_FROM
    for name, fn in vars(module).items()
    if name.startswith("test_") and _is_shared(fn)
}
SHARED_TESTS = sorted(_SHARED)
globals().update(_SHARED)

_CANDIDATES = (
    [os.environ["TOKENRELAY_TEST_POSTGRES_URL"]]
    if os.environ.get("TOKENRELAY_TEST_POSTGRES_URL")
    else ["postgresql://postgres@127.0.0.1:5432/test", "postgresql://root@127.0.0.1:5432/test"]
)

Raw = psycopg.AsyncConnection[tuple[object, ...]]


def _with_database(url: str, dbname: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + dbname))


def _with_schema(url: str, schema: str) -> str:
    parts = urlsplit(url)
    option = "options=" + quote(f"-csearch_path={schema}", safe="")
    return urlunsplit(parts._replace(query=f"{parts.query}&{option}" if parts.query else option))


def _admin_connect() -> tuple[psycopg.Connection[tuple[object, ...]], str]:
    problems = []
    for url in _CANDIDATES:
        try:
            return psycopg.connect(url, autocommit=True, connect_timeout=3), url
        except psycopg.Error as exc:
            problems.append(" ".join(str(exc).split()))
    reason = "PostgreSQL is unreachable (" + "; ".join(problems) + ")"
    if os.environ.get("CI"):
        pytest.fail(f"{reason}: CI must provide PostgreSQL (set TOKENRELAY_TEST_POSTGRES_URL)")
    pytest.skip(f"{reason}: set TOKENRELAY_TEST_POSTGRES_URL or start PostgreSQL on 127.0.0.1:5432")


@pytest.fixture(scope="module")
def pg_server() -> Iterator[Callable[[], str]]:
    """A factory of throwaway databases (each a URL); all of them are dropped at the end."""
    admin, admin_url = _admin_connect()
    created: list[str] = []

    def new_database() -> str:
        name = f"tokenrelay_test_{secrets.token_hex(6)}"
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        created.append(name)
        return _with_database(admin_url, name)

    try:
        yield new_database
    finally:
        with admin:
            for name in created:
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="module")
def pg_database(pg_server: Callable[[], str]) -> str:
    """The URL of this module's throwaway database."""
    return pg_server()


@pytest.fixture
def pg_url(pg_database: str) -> str:
    """A URL whose `search_path` is a fresh, empty schema of the module's database."""
    schema = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    return _with_schema(pg_database, schema)


@pytest.fixture
async def store(pg_url: str) -> AsyncIterator[PostgresSessionStore]:
    s = PostgresSessionStore(pg_url)
    yield s
    await s.close()


@pytest.fixture
async def raw(pg_url: str) -> AsyncIterator[Callable[[], Awaitable[Raw]]]:
    """Open plain autocommit connections on the test's schema (closed at teardown)."""
    opened: list[Raw] = []

    async def connect() -> Raw:
        conn = await psycopg.AsyncConnection.connect(pg_url, autocommit=True)
        opened.append(conn)
        return conn

    yield connect
    for conn in opened:
        await conn.close()


def _shown(exc: BaseException) -> str:
    """Everything an exception (with its cause and context chain) would show."""
    parts: list[str] = []
    seen: BaseException | None = exc
    while seen is not None and len(parts) < 10:
        parts += [str(seen), repr(seen), *(str(arg) for arg in seen.args)]
        seen = seen.__cause__ or seen.__context__
    return "\n".join(parts)


async def _all(conn: Raw, query: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    cur = await conn.execute(query, params)
    return await cur.fetchall()


# --------------------------------------------------------------------------- construction


def test_the_shared_behavioural_tests_are_collected() -> None:
    assert len(SHARED_TESTS) >= 18
    assert {
        "test_ownership_isolation",
        "test_recover_running",
        "test_concurrent_sessions_keep_their_own_turns_in_order",
    } <= set(SHARED_TESTS)


def test_satisfies_the_protocol_and_does_no_io_until_used() -> None:
    def accepts(store: SessionStore) -> SessionStore:
        return store

    s = PostgresSessionStore("postgresql://nobody:s3cret@127.0.0.1:1/nowhere", min_size=0, max_size=2)
    accepts(s)
    assert s.where == "127.0.0.1:1/nowhere"
    assert repr(s) == "PostgresSessionStore('postgresql://nobody:***@127.0.0.1:1/nowhere')"
    asyncio.run(s.close())


def test_pool_size_is_validated() -> None:
    with pytest.raises(ValueError):
        PostgresSessionStore("postgresql://localhost/db", min_size=5, max_size=2)
    with pytest.raises(ValueError):
        PostgresSessionStore("postgresql://localhost/db", min_size=0, max_size=0)


def test_an_invalid_url_is_a_config_error_without_the_password() -> None:
    with pytest.raises(ConfigError, match="invalid PostgreSQL URL") as info:
        PostgresSessionStore("postgresql://u:s3cret@localhost/db?bogus_option=1")
    assert "s3cret" not in _shown(info.value)
    assert "postgresql://u:***@localhost/db" in str(info.value)


@pytest.mark.anyio
async def test_unreachable_server_is_a_config_error_without_the_password() -> None:
    store = PostgresSessionStore("postgresql://alice:s3cret%2Fpw@127.0.0.1:1/app?connect_timeout=2")
    try:
        with pytest.raises(
            ConfigError, match=r"^cannot connect to PostgreSQL at 127\.0\.0\.1:1/app: "
        ) as info:
            await store.create_session()
        shown = _shown(info.value) + repr(store)
        assert "s3cret" not in shown
        assert "\n" not in str(info.value)
        health = await store.integrity_check()
        assert health.startswith("cannot connect to PostgreSQL at 127.0.0.1:1/app") and "s3cret" not in health
    finally:
        await store.close()


@pytest.mark.anyio
async def test_a_missing_database_or_role_is_a_config_error(pg_database: str) -> None:
    missing_db = _with_database(pg_database, "tokenrelay_no_such_db")
    parts = urlsplit(pg_database)
    missing_role = urlunsplit(parts._replace(netloc=f"no_such_role:pw@{parts.hostname}:{parts.port}"))
    for url, reason in [(missing_db, "tokenrelay_no_such_db"), (missing_role, "no_such_role")]:
        store = PostgresSessionStore(url)
        try:
            with pytest.raises(ConfigError, match="cannot connect to PostgreSQL at .*" + reason):
                await store.list_sessions()
        finally:
            await store.close()


@pytest.mark.anyio
async def test_closed_store_refuses_work(store: PostgresSessionStore) -> None:
    await store.create_session()
    await store.close()
    await store.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        await store.create_session()
    never_used = PostgresSessionStore("postgresql://127.0.0.1:1/x")
    await never_used.close()
    with pytest.raises(RuntimeError, match="closed"):
        await never_used.get_session("s")


@pytest.mark.anyio
async def test_open_store_postgres_urls(pg_url: str) -> None:
    for url in (pg_url, "postgres://" + pg_url.removeprefix("postgresql://")):
        store = open_store(url)
        try:
            assert isinstance(store, PostgresSessionStore)
            s = await store.create_session(title=url[:10])
            assert await store.get_session(s.id) == s
            assert await store.integrity_check() == "ok"
        finally:
            await store.close()


# --------------------------------------------------------------------------- data


@pytest.mark.anyio
async def test_persistence_across_close_and_reopen(pg_url: str) -> None:
    s = await test_memory.fill_and_close(PostgresSessionStore(pg_url))
    reopened = PostgresSessionStore(pg_url)
    try:
        info = await reopened.get_session(s.id, owner="alice")
        assert info is not None and (info.id, info.created_at, info.title) == (
            s.id,
            s.created_at,
            "remember me",
        )
        await test_memory.check_reopened(reopened, s)
    finally:
        await reopened.close()


@pytest.mark.anyio
async def test_timestamps_round_trip_exactly(store: PostgresSessionStore) -> None:
    s = await store.create_session()
    tid = await store.begin_turn(s.id, run_id="r", user_text="q")
    await store.finish_turn(tid, answer="a", status="complete")
    info = await store.get_session(s.id)
    [turn] = await store.history(s.id)
    assert info is not None and isinstance(info.updated_at, float)
    assert isinstance(turn.id, int) and isinstance(turn.created_at, float)
    assert info.updated_at == turn.created_at  # the same time.time() value, unrounded
    assert turn.finished_at is not None and turn.finished_at >= turn.created_at


@pytest.mark.anyio
async def test_nul_characters(store: PostgresSessionStore) -> None:
    s = await store.create_session(title="a\x00b")
    assert s.title == "a\ufffdb"
    tid = await store.begin_turn(s.id, run_id="r\x00", user_text="hello\x00world")
    await store.update_partial(tid, "part\x00ial")
    [t] = await store.history(s.id)
    assert (t.user_text, t.run_id, t.answer) == ("hello\ufffdworld", "r\ufffd", "part\ufffdial")
    await store.finish_turn(tid, answer="done\x00", status="failed", error="bad\x00")
    [t] = await store.history(s.id)
    assert (t.answer, t.error) == ("done\ufffd", "bad\ufffd")
    await store.set_document(s.id, name="n\x00", text="binary\x00junk")
    doc = await store.get_document(s.id)
    assert doc is not None and (doc.name, doc.text) == ("n\ufffd", "binary\ufffdjunk")
    owned = await store.create_session(owner="bob\x00")
    assert await store.get_session(owned.id, owner="bob\x00") == owned

    with pytest.raises(ValueError, match="NUL"):
        await store.create_session(session_id="bad\x00id")
    assert await store.get_session("x\x00") is None
    assert await store.delete_session("x\x00") is False
    assert await store.history("x\x00") == []
    assert await store.get_document("x\x00") is None
    with pytest.raises(KeyError):
        await store.begin_turn("x\x00", run_id="r", user_text="q")
    with pytest.raises(KeyError):
        await store.set_document("x\x00", name="n", text="t")


@pytest.mark.anyio
async def test_deletes_racing_writes_never_leak_database_errors(store: PostgresSessionStore) -> None:
    sessions = [await store.create_session() for _ in range(30)]

    async def write(session_id: str) -> None:
        for i in range(5):
            try:
                await store.set_document(session_id, name="d", text=str(i))
                await store.begin_turn(session_id, run_id="r", user_text=str(i))
            except KeyError:
                return

    results = await asyncio.gather(
        *(write(s.id) for s in sessions), *(store.delete_session(s.id) for s in sessions)
    )
    assert all(r is True for r in results[len(sessions) :])
    assert await store.list_sessions() == []
    for s in sessions:
        assert await store.history(s.id) == [] and await store.get_document(s.id) is None


@pytest.mark.anyio
async def test_schemas_sharing_a_database_are_isolated(pg_database: str) -> None:
    urls = []
    with psycopg.connect(pg_database, autocommit=True) as conn:
        for _ in range(2):
            schema = f"t_{secrets.token_hex(6)}"
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
            urls.append(_with_schema(pg_database, schema))
    first, second = PostgresSessionStore(urls[0]), PostgresSessionStore(urls[1])
    try:
        a = await first.create_session(session_id="same-id")
        b = await second.create_session(session_id="same-id", title="other")
        tid = await first.begin_turn(a.id, run_id="r", user_text="q")
        got_a, got_b = await first.get_session("same-id"), await second.get_session("same-id")
        assert got_a is not None and got_b is not None
        assert (
            (got_a.title, got_b.title) == ("q", "other") and got_b == b and got_a.created_at == a.created_at
        )
        assert await second.history("same-id") == []
        assert await second.recover_running() == 0
        assert [t.id for t in await first.history("same-id")] == [tid]
    finally:
        await first.close()
        await second.close()


# --------------------------------------------------------------------------- schema and migrations


@pytest.mark.anyio
async def test_schema(store: PostgresSessionStore, raw: Callable[[], Awaitable[Raw]]) -> None:
    await store.create_session(session_id="x")
    conn = await raw()
    tables = {
        row[0]
        for row in await _all(conn, "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
    }
    assert tables == {*TABLES, "tokenrelay_migrations"}
    indexes = {
        row[0]
        for row in await _all(conn, "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()")
    }
    assert {
        "tokenrelay_turns_by_session",
        "tokenrelay_sessions_by_owner",
        "tokenrelay_turns_running",
    } <= indexes
    types: dict[object, object] = dict(
        await _all(  # type: ignore[arg-type]
            conn,
            "SELECT column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = 'tokenrelay_turns'",
        )
    )
    assert types["created_at"] == types["heartbeat_at"] == "double precision"
    with pytest.raises(psycopg.errors.CheckViolation):
        await conn.execute(
            "INSERT INTO tokenrelay_turns (session_id, run_id, user_text, status, created_at, heartbeat_at)"
            " VALUES ('x', 'r', 'u', 'bogus', 0, 0)"
        )


@pytest.mark.anyio
async def test_migrations_are_recorded_and_not_reapplied(
    pg_url: str, raw: Callable[[], Awaitable[Raw]]
) -> None:
    store = PostgresSessionStore(pg_url)
    assert await store.integrity_check() == "ok"
    await store.close()
    conn = await raw()
    query = "SELECT name, applied_at FROM tokenrelay_migrations ORDER BY name"
    first = await _all(conn, query)
    assert [name for name, _ in first] == [name for name, _ in MIGRATIONS]

    store = PostgresSessionStore(pg_url)  # re-open: nothing to do
    assert await store.integrity_check() == "ok"
    await store.close()
    assert await _all(conn, query) == first
    assert await apply_migrations(conn) == []


@pytest.mark.anyio
async def test_a_schema_with_only_the_first_migration_is_upgraded(
    pg_url: str, raw: Callable[[], Awaitable[Raw]]
) -> None:
    conn = await raw()
    assert await apply_migrations(conn, MIGRATIONS[:1]) == [MIGRATIONS[0][0]]
    await conn.execute(
        "INSERT INTO tokenrelay_sessions (id, owner, title, created_at, updated_at)"
        " VALUES ('old', 'alice', 't', 1, 1)"
    )
    indexes = (
        "SELECT count(*) FROM pg_indexes WHERE schemaname = current_schema()"
        " AND indexname = 'tokenrelay_turns_by_session'"
    )
    assert await _all(conn, indexes) == [(0,)]
    store = PostgresSessionStore(pg_url)
    try:
        old = await store.get_session("old", owner="alice")  # opening applies the rest
        assert await _all(conn, indexes) == [(1,)]
        assert old is not None and old.title == "t"  # existing data survives the upgrade
        names = [row[0] for row in await _all(conn, "SELECT name FROM tokenrelay_migrations ORDER BY name")]
        assert names == [name for name, _ in MIGRATIONS]
        assert await store.integrity_check() == "ok"
    finally:
        await store.close()


@pytest.mark.anyio
async def test_a_failing_migration_leaves_nothing_behind(raw: Callable[[], Awaitable[Raw]]) -> None:
    conn = await raw()
    broken = ("9999_broken", ["CREATE TABLE half_done (x integer)", "SELECT 1 / 0"])
    with pytest.raises(psycopg.errors.DivisionByZero):
        await apply_migrations(conn, [*MIGRATIONS, broken])
    assert await _all(conn, "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()") == []


@pytest.mark.anyio
async def test_integrity_check_reports_missing_migrations_and_tables(
    store: PostgresSessionStore, raw: Callable[[], Awaitable[Raw]]
) -> None:
    assert await store.integrity_check() == "ok"
    conn = await raw()
    await conn.execute("DELETE FROM tokenrelay_migrations WHERE name = '0002_indexes'")
    assert await store.integrity_check() == "migrations not applied: 0002_indexes"
    await conn.execute("DROP TABLE tokenrelay_documents")
    assert await store.integrity_check() == (
        "migrations not applied: 0002_indexes\ntable tokenrelay_documents is missing"
    )
    await conn.execute("DROP TABLE tokenrelay_migrations")
    assert await store.integrity_check() == "the tokenrelay_migrations table is missing"


@pytest.mark.anyio
async def test_a_schema_the_user_cannot_create_in_is_a_config_error(pg_database: str) -> None:
    store = PostgresSessionStore(_with_schema(pg_database, "no_such_schema"))
    try:
        with pytest.raises(ConfigError, match="cannot set up the tokenrelay tables"):
            await store.create_session()
    finally:
        await store.close()


@pytest.mark.anyio
async def test_four_workers_opening_a_fresh_database_at_once(pg_server: Callable[[], str]) -> None:
    url = pg_server()  # a brand-new database: every store races to create the schema
    stores = [PostgresSessionStore(url) for _ in range(4)]
    try:
        created = await asyncio.gather(*(s.create_session(owner=f"w{i}") for i, s in enumerate(stores)))
        assert [await s.integrity_check() for s in stores] == ["ok"] * 4
        for i, info in enumerate(created):
            assert await stores[(i + 1) % 4].get_session(info.id, owner=f"w{i}") == info
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            rows = await _all(conn, "SELECT name FROM tokenrelay_migrations ORDER BY name")
            assert [row[0] for row in rows] == [name for name, _ in MIGRATIONS]
    finally:
        for s in stores:
            await s.close()


@pytest.mark.anyio
async def test_four_workers_opening_fresh_schemas_repeatedly(pg_database: str) -> None:
    for _ in range(3):
        schema = f"t_{secrets.token_hex(6)}"
        with psycopg.connect(pg_database, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        stores = [PostgresSessionStore(_with_schema(pg_database, schema), max_size=2) for _ in range(4)]
        try:
            assert await asyncio.gather(*(s.integrity_check() for s in stores)) == ["ok"] * 4
        finally:
            for s in stores:
                await s.close()


# --------------------------------------------------------------------------- several workers


@pytest.mark.anyio
async def test_two_workers_interleave_writes(pg_url: str) -> None:
    first = PostgresSessionStore(pg_url)
    second = PostgresSessionStore(pg_url)
    try:
        shared = await first.create_session(owner="alice")
        assert await second.get_session(shared.id, owner="alice") == shared

        async def writer(store: PostgresSessionStore, name: str) -> None:
            own = await store.create_session(owner=name)
            for j in range(20):
                for sid in (own.id, shared.id):
                    tid = await store.begin_turn(sid, run_id=f"{name}-{j}", user_text=f"{name} {j}")
                    await store.finish_turn(tid, answer=f"{name} answer {j}", status="complete")

        await asyncio.gather(writer(first, "w1"), writer(second, "w2"), writer(first, "w3"))

        turns = await second.history(shared.id)
        assert len(turns) == 60 and len({t.id for t in turns}) == 60
        for name in ("w1", "w2", "w3"):
            assert [t.user_text for t in turns if t.run_id.startswith(name)] == [
                f"{name} {j}" for j in range(20)
            ]
        assert [t.id for t in turns] == sorted(t.id for t in turns)
        for name in ("w1", "w2", "w3"):
            [own] = await first.list_sessions(owner=name)
            assert len(await second.history(own.id)) == 20
        assert await first.integrity_check() == "ok" and await second.integrity_check() == "ok"
    finally:
        await first.close()
        await second.close()


async def _age(conn: Raw, turn_id: int, seconds: float) -> None:
    """Pretend the turn's last heartbeat was `seconds` earlier."""
    await conn.execute(
        "UPDATE tokenrelay_turns SET heartbeat_at = heartbeat_at - %s WHERE id = %s", (seconds, turn_id)
    )


@pytest.mark.anyio
async def test_recover_running_leaves_live_workers_turns_alone(
    pg_url: str, raw: Callable[[], Awaitable[Raw]]
) -> None:
    conn = await raw()
    live_worker = PostgresSessionStore(pg_url)
    dead_worker = PostgresSessionStore(pg_url)
    restarted = PostgresSessionStore(pg_url)
    try:
        s = await live_worker.create_session()
        live = await live_worker.begin_turn(s.id, run_id="live", user_text="still generating")
        await live_worker.update_partial(live, "so far")
        orphan = await dead_worker.begin_turn(s.id, run_id="orphan", user_text="worker died")
        await dead_worker.update_partial(orphan, "half an ans")
        await dead_worker.close()  # the crash
        await _age(conn, orphan, 120)

        # a worker (re)starting next to the live one recovers only the stale turn
        assert await restarted.recover_running(older_than_s=60) == 1
        assert await restarted.recover_running(older_than_s=60) == 0
        t_live, t_orphan = await restarted.history(s.id)
        assert (t_live.status, t_live.answer, t_live.error) == ("running", "so far", None)
        assert (t_orphan.status, t_orphan.answer, t_orphan.error) == (
            "interrupted",
            "half an ans",
            RECOVERED_ERROR,
        )
        assert t_orphan.finished_at is not None

        # the live worker finishes normally
        await live_worker.update_partial(live, "so far, and more")
        await live_worker.finish_turn(live, answer="the full answer", status="complete")
        assert (await restarted.history(s.id))[0].status == "complete"
    finally:
        for store in (live_worker, dead_worker, restarted):
            await store.close()


@pytest.mark.anyio
async def test_recover_running_heartbeats(
    store: PostgresSessionStore, raw: Callable[[], Awaitable[Raw]]
) -> None:
    conn = await raw()
    s = await store.create_session()
    checkpointed = await store.begin_turn(s.id, run_id="a", user_text="q1")
    silent = await store.begin_turn(s.id, run_id="b", user_text="q2")
    fresh = await store.begin_turn(s.id, run_id="c", user_text="q3")
    await _age(conn, checkpointed, 120)
    await _age(conn, silent, 120)
    await store.update_partial(checkpointed, "tick")  # refreshes the heartbeat, even unchanged
    await store.update_partial(checkpointed, "tick")

    assert await store.recover_running(older_than_s=60) == 1
    statuses = {t.id: t.status for t in await store.history(s.id)}
    assert statuses == {checkpointed: "running", silent: "interrupted", fresh: "running"}
    assert await store.recover_running(older_than_s=3600) == 0

    await asyncio.sleep(0.05)
    assert await store.recover_running(older_than_s=0) == 2  # everything not touched just now
    await store.finish_turn(fresh, answer="late", status="complete")  # a late writer changes nothing
    assert all(t.status == "interrupted" for t in await store.history(s.id))

    again = await store.begin_turn(s.id, run_id="d", user_text="q4")
    assert await store.recover_running() == 1  # None: every running turn, however fresh
    assert (await store.history(s.id, limit=1))[0].id == again

    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="older_than_s"):
            await store.recover_running(older_than_s=bad)


@pytest.mark.anyio
async def test_interrupt_run_from_another_worker(pg_url: str) -> None:
    worker, watcher = PostgresSessionStore(pg_url), PostgresSessionStore(pg_url)
    try:
        s = await worker.create_session()
        done = await worker.begin_turn(s.id, run_id="run-done", user_text="q1")
        await worker.finish_turn(done, answer="a1", status="complete")
        lost = await worker.begin_turn(s.id, run_id="run-lost", user_text="q2")
        await worker.update_partial(lost, "partial")
        other = await worker.begin_turn(s.id, run_id="run-other", user_text="q3")

        assert await watcher.interrupt_run("run-lost", error="worker lost") is True
        assert await watcher.interrupt_run("run-lost", error="again") is False
        assert await watcher.interrupt_run("run-done", error="too late") is False
        assert await watcher.interrupt_run("run-missing", error="x") is False
        t_done, t_lost, t_other = await watcher.history(s.id)
        assert (t_done.status, t_done.error) == ("complete", None)
        assert (t_lost.status, t_lost.answer, t_lost.error) == ("interrupted", "partial", "worker lost")
        assert t_lost.finished_at is not None
        assert t_other.status == "running" and t_other.id == other

        await worker.finish_turn(lost, answer="late", status="complete")  # the late writer changes nothing
        assert (await watcher.history(s.id))[1] == t_lost
    finally:
        await worker.close()
        await watcher.close()
