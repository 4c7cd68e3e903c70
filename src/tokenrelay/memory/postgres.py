"""`SessionStore` on PostgreSQL (psycopg 3 + `psycopg_pool`): for several server workers,
possibly on several hosts, sharing one database. Needs the `postgres` extra.

Invariants (the same behaviour as `SQLiteSessionStore`; the SQLite test suite runs against it):

* `PostgresSessionStore(url)` does no I/O. The connection pool (`AsyncConnectionPool`,
  `min_size`..`max_size` connections, autocommit) opens on first use, in the running event
  loop, and belongs to that loop; `close()` closes it. Failing to connect raises
  `ConfigError("cannot connect to PostgreSQL at host:port/db: <reason>")`. The password
  never appears in an exception, a log line or `repr()`.
* Every table is prefixed (`tokenrelay_sessions`, `tokenrelay_turns`, `tokenrelay_documents`,
  `tokenrelay_migrations`) and every name is unqualified, so a shared database is fine and
  `?options=-csearch_path%3Dmyschema` in the URL puts everything in a schema of its own.
* The schema is built by an ordered, append-only list of migrations recorded in
  `tokenrelay_migrations`. When a store opens, the missing ones are applied in one
  transaction under `pg_advisory_xact_lock` (keyed by the current schema): workers starting
  at once wait for each other and each migration runs once. DDL is transactional, so a
  failing migration leaves nothing behind.
* Timestamps are epoch seconds in `double precision`, taken from the worker's clock
  (`time.time()`), as in SQLite. Every write is one transaction (most are one statement).
* A finished turn is never rewritten: `finish_turn` and `update_partial` only touch turns
  whose status is still `running`.
* Losing the server raises `StorageError`; a checkpoint that fails is skipped, a final turn
  write that fails is retried in the background until the server is back
  (memory/deferred.py). The pool replaces broken connections: no restart needed.
* A session of another owner behaves exactly like a missing one (`owner=None` sees only
  sessions without owner).
* PostgreSQL `text` cannot hold NUL characters: in stored texts (messages, answers, titles,
  documents, owners, run ids) a NUL becomes U+FFFD; a session id containing NUL is refused
  by `create_session` and is never found.

Several workers and `recover_running`
-------------------------------------

Every running turn carries a `heartbeat_at` (epoch seconds on the *database server's* clock,
so the workers' clocks may disagree), set by `begin_turn` and refreshed by every
`update_partial`. `recover_running()` (no argument) marks *every* running turn interrupted:
right for a single worker, wrong when another live worker is generating. With several
workers, call `recover_running(older_than_s=N)`: only turns whose heartbeat is more than `N`
seconds old are taken to be orphans of a dead worker. That is sound as long as each live
worker calls `update_partial` on its running turns more often than every `N` seconds (it is
the crash checkpoint anyway); call it at start-up and then periodically, since a worker that
dies leaves turns that only become old enough later. `N` must exceed the longest gap
between two checkpoints of a live run (prompt evaluation, tool calls: the agent loop
checkpoints only on answer text). When a coordinator knows exactly which runs died (the Redis
leases), `interrupt_run(run_id, error=...)` closes those precisely; `recover_running` with
`older_than_s` is then the safety net for runs nobody was left to notice.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, cast
from urllib.parse import quote

import psycopg
from psycopg import AsyncConnection
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from tokenrelay.errors import ConfigError, StorageError
from tokenrelay.memory.base import Document, SessionInfo, Step, Turn, TurnStatus
from tokenrelay.memory.deferred import DeferredWrites
from tokenrelay.memory.sqlite import (
    FINAL_STATUSES,
    RECOVERED_ERROR,
    dump_steps,
    load_steps,
    new_session_id,
    title_from_text,
)

__all__ = ["MIGRATIONS", "TABLES", "PostgresSessionStore", "apply_migrations"]

Connection = AsyncConnection[TupleRow]
log = logging.getLogger("tokenrelay.memory")

#: Seconds to wait for a connection when none is given in the URL (`connect_timeout`).
CONNECT_TIMEOUT_S = 10
#: Seconds to wait for the pool's first connections.
POOL_OPEN_TIMEOUT_S = 30.0
#: Seconds a checkpoint waits for a connection (it is skipped after that: best effort).
CHECKPOINT_TIMEOUT_S = 2.0
#: After a failed checkpoint, checkpoints are skipped this long (a run must not stall on each
#: one while the server is away).
CHECKPOINT_PAUSE_S = 5.0
#: Seconds the first try of a turn's final write waits before it is deferred (the run's last
#: event waits for it).
FINISH_TIMEOUT_S = 2.0
#: Seconds any other operation waits for a connection (the server may be restarting).
CONNECTION_TIMEOUT_S = 10.0
#: For this long after a failure, operations wait at most `OUTAGE_WAIT_S` for a connection.
OUTAGE_S = 5.0
OUTAGE_WAIT_S = 1.0
#: First key of the migration lock (`pg_advisory_xact_lock(int4, int4)`: a key space apart
#: from the one-bigint form); the second key is a hash of the current schema.
MIGRATION_LOCK_CLASS = 0x746B7231  # "tkr1"
TABLES = ("tokenrelay_sessions", "tokenrelay_turns", "tokenrelay_documents")
#: The database server's clock as epoch seconds (the heartbeat's clock).
_SERVER_NOW = "extract(epoch FROM clock_timestamp())::double precision"

# --------------------------------------------------------------------------- migrations

_M0001_INITIAL = (
    """CREATE TABLE tokenrelay_sessions (
        id text PRIMARY KEY,
        seq bigint GENERATED ALWAYS AS IDENTITY,
        owner text NULL,
        title text NOT NULL DEFAULT '',
        created_at double precision NOT NULL,
        updated_at double precision NOT NULL
    )""",
    """CREATE TABLE tokenrelay_turns (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        session_id text NOT NULL REFERENCES tokenrelay_sessions (id) ON DELETE CASCADE,
        run_id text NOT NULL,
        user_text text NOT NULL,
        answer text NOT NULL DEFAULT '',
        status text NOT NULL CHECK (status IN ('running', 'complete', 'interrupted', 'failed')),
        error text NULL,
        created_at double precision NOT NULL,
        finished_at double precision NULL,
        heartbeat_at double precision NOT NULL
    )""",
    """CREATE TABLE tokenrelay_documents (
        session_id text PRIMARY KEY REFERENCES tokenrelay_sessions (id) ON DELETE CASCADE,
        name text NOT NULL,
        text text NOT NULL,
        created_at double precision NOT NULL
    )""",
)

_M0002_INDEXES = (
    "CREATE INDEX IF NOT EXISTS tokenrelay_turns_by_session ON tokenrelay_turns (session_id, id)",
    "CREATE INDEX IF NOT EXISTS tokenrelay_sessions_by_owner ON tokenrelay_sessions (owner, updated_at)",
    # `recover_running` scans the running turns by heartbeat at every start: keep that cheap.
    "CREATE INDEX IF NOT EXISTS tokenrelay_turns_running ON tokenrelay_turns (heartbeat_at)"
    " WHERE status = 'running'",
)

_M0003_TURN_FINISH_REASON_STEPS = (
    "ALTER TABLE tokenrelay_turns ADD COLUMN finish_reason text NULL",
    "ALTER TABLE tokenrelay_turns ADD COLUMN steps text NOT NULL DEFAULT '[]'",
)

# what fitting a document to the context window left out (NULL: stored whole, or before)
_M0004_DOCUMENT_CUT = (
    "ALTER TABLE tokenrelay_documents ADD COLUMN total_chars bigint NULL,"
    " ADD COLUMN total_tokens bigint NULL, ADD COLUMN budget_tokens bigint NULL",
)

_M0101_ANSWERED_TURNS = (
    # the memory window reads the last k turns with an answer: exact, however many failed
    "CREATE INDEX IF NOT EXISTS tokenrelay_turns_answered ON tokenrelay_turns (session_id, id)"
    " WHERE status <> 'running' AND answer <> ''",
)

#: Applied in this order; a name, once released, never changes meaning. Append only.
MIGRATIONS: list[tuple[str, Sequence[str]]] = [
    ("0001_initial", _M0001_INITIAL),
    ("0002_indexes", _M0002_INDEXES),
    ("0003_turn_finish_reason_steps", _M0003_TURN_FINISH_REASON_STEPS),
    ("0004_document_cut", _M0004_DOCUMENT_CUT),
    ("0101_answered_turns", _M0101_ANSWERED_TURNS),
]


async def apply_migrations(
    conn: Connection, migrations: Sequence[tuple[str, Sequence[str]]] | None = None
) -> list[str]:
    """Apply the missing migrations in one transaction, under a transaction-level advisory
    lock (concurrent callers wait, then find nothing to do); return the names applied.

    `conn` must be in autocommit mode (no transaction open)."""
    migrations = MIGRATIONS if migrations is None else migrations
    async with conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock(%s::integer, hashtext(coalesce(current_schema(), '')))",
            (MIGRATION_LOCK_CLASS,),
        )
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS tokenrelay_migrations"
            " (name text PRIMARY KEY, applied_at double precision NOT NULL)"
        )
        cur = await conn.execute("SELECT name FROM tokenrelay_migrations")
        done = {row[0] for row in await cur.fetchall()}
        applied: list[str] = []
        for name, statements in migrations:
            if name in done:
                continue
            for statement in statements:
                await conn.execute(cast(Any, statement))
            await conn.execute(
                "INSERT INTO tokenrelay_migrations (name, applied_at) VALUES (%s, %s)", (name, time.time())
            )
            applied.append(name)
    return applied


# --------------------------------------------------------------------------- rows

_SESSION_COLUMNS = "id, owner, title, created_at, updated_at"
_TURN_COLUMNS = (
    "id, session_id, run_id, user_text, answer, status, error, created_at, finished_at, finish_reason, steps"
)


def _session(row: TupleRow) -> SessionInfo:
    id_, owner, title, created_at, updated_at = row
    return SessionInfo(id=id_, owner=owner, title=title, created_at=created_at, updated_at=updated_at)


def _turn(row: TupleRow) -> Turn:
    id_, session_id, run_id, user_text, answer, status, error, created_at, finished_at, reason, steps = row
    return Turn(
        id=id_,
        session_id=session_id,
        run_id=run_id,
        user_text=user_text,
        answer=answer,
        status=status,
        error=error,
        created_at=created_at,
        finished_at=finished_at,
        finish_reason=reason,
        steps=load_steps(steps),
    )


def _text(value: str) -> str:
    """`value` storable in a PostgreSQL `text` (which cannot hold NUL)."""
    return value.replace("\x00", "\ufffd")


def _opt_text(value: str | None) -> str | None:
    return None if value is None else _text(value)


def _owner_filter(owner: str | None) -> tuple[str, tuple[str, ...]]:
    """The SQL condition (and its parameters) selecting the sessions of `owner`."""
    return ("owner IS NULL", ()) if owner is None else ("owner = %s", (_text(owner),))


# --------------------------------------------------------------------------- the store


class PostgresSessionStore:
    """Sessions, turns and documents in PostgreSQL tables, through a connection pool."""

    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 10) -> None:
        if min_size < 0 or max_size < max(min_size, 1):
            raise ValueError(f"need 0 <= min_size <= max_size and max_size >= 1, not {min_size}, {max_size}")
        try:
            params = conninfo_to_dict(url)
        except psycopg.Error as exc:
            # libpq may quote the whole conninfo string (password included) in its message
            reason = _one_line(str(exc)).replace(url, _redact_url(url))
            raise ConfigError(f"invalid PostgreSQL URL {_redact_url(url)!r}: {reason}") from None
        self._url = url
        self._secrets = _secret_forms(url, params.get("password"))
        host = str(params.get("host") or os.environ.get("PGHOST") or "localhost")
        port = str(params.get("port") or os.environ.get("PGPORT") or "5432")
        dbname = str(params.get("dbname") or os.environ.get("PGDATABASE") or params.get("user") or "")
        #: "host:port/db", for messages.
        self.where = f"{host}:{port}/{dbname}"
        self._connect_kwargs: dict[str, Any] = {"autocommit": True}
        if "connect_timeout" not in params and "PGCONNECT_TIMEOUT" not in os.environ:
            self._connect_kwargs["connect_timeout"] = CONNECT_TIMEOUT_S
        if "application_name" not in params and "PGAPPNAME" not in os.environ:
            self._connect_kwargs["application_name"] = "tokenrelay"
        self.min_size = min_size
        self.max_size = max_size
        self._pool: AsyncConnectionPool[Connection] | None = None
        self._open_lock = asyncio.Lock()
        self._closed = False
        self._deferred = DeferredWrites()
        self._checkpoints_paused_until = 0.0
        self._failed_at = float("-inf")
        self._probed_at = float("-inf")
        self._degraded = False  # a connection failed since the last one that worked

    def __repr__(self) -> str:
        return f"PostgresSessionStore({_redact_url(self._url)!r})"

    # -- plumbing

    def _reason(self, exc: BaseException) -> str:
        """The exception's message on one line, with no trace of the password."""
        text = _one_line(str(exc) or type(exc).__name__)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    async def _get_pool(self) -> AsyncConnectionPool[Connection]:
        if self._closed:
            raise RuntimeError("the session store is closed")
        if self._pool is None:
            async with self._open_lock:
                if self._pool is None:
                    pool = await self._open()
                    if self._closed:  # closed while we were opening
                        await pool.close()
                        raise RuntimeError("the session store is closed")
                    self._pool = pool
        return self._pool

    async def _open(self) -> AsyncConnectionPool[Connection]:
        """Connect once to apply the migrations (a clear error when that fails), then open
        the pool."""
        try:
            conn = await psycopg.AsyncConnection.connect(self._url, **self._connect_kwargs)
        except psycopg.Error as exc:
            raise ConfigError(f"cannot connect to PostgreSQL at {self.where}: {self._reason(exc)}") from None
        try:
            async with conn:
                await apply_migrations(conn)
        except psycopg.Error as exc:
            raise ConfigError(
                f"cannot set up the tokenrelay tables in PostgreSQL at {self.where}: {self._reason(exc)}"
            ) from None
        try:
            return await self._new_pool(POOL_OPEN_TIMEOUT_S)
        except PoolTimeout as exc:
            raise ConfigError(f"cannot connect to PostgreSQL at {self.where}: {self._reason(exc)}") from None

    async def _new_pool(self, open_timeout_s: float) -> AsyncConnectionPool[Connection]:
        pool: AsyncConnectionPool[Connection] = AsyncConnectionPool(
            self._url,
            kwargs=self._connect_kwargs,
            min_size=self.min_size,
            max_size=self.max_size,
            open=False,
            check=AsyncConnectionPool.check_connection,
            name="tokenrelay",
            timeout=CONNECTION_TIMEOUT_S,
        )
        try:
            await pool.open(wait=True, timeout=open_timeout_s)
        except BaseException:
            await pool.close()
            raise
        return pool

    async def _back(self, pool: AsyncConnectionPool[Connection]) -> AsyncConnectionPool[Connection]:
        """During an outage, at most once a second: if the server answers again, a fresh pool.
        (The pool's own reconnection backs off exponentially for as long as the outage
        lasted, so after a long one it would leave the store failing long after the server is
        back.)"""
        now = time.monotonic()
        if now - self._probed_at < 1.0:
            return pool
        self._probed_at = now
        try:
            probe = await psycopg.AsyncConnection.connect(
                self._url, **{**self._connect_kwargs, "connect_timeout": 1}
            )
            await probe.close()
            fresh = await self._new_pool(OUTAGE_WAIT_S * 5)
        except (psycopg.Error, PoolTimeout):
            return pool
        if self._pool is not pool or self._closed:  # someone else swapped it meanwhile
            await fresh.close()
            return self._pool or pool
        self._pool, self._degraded = fresh, False
        await pool.close(timeout=1.0)
        log.info("PostgreSQL at %s is back", self.where)
        return fresh

    @asynccontextmanager
    async def _connection(self, wait_s: float | None = None) -> AsyncIterator[Connection]:
        """A pooled connection in autocommit mode (use `conn.transaction()` to write).
        Losing the server (a restart, the network) raises `StorageError`; the pool replaces
        broken connections, so the store works again as soon as the server is back. Within
        `OUTAGE_S` of a failure, waits for a connection are cut to `OUTAGE_WAIT_S`: while the
        server is away, requests fail fast instead of each waiting the whole timeout; and until
        a connection works again, the server is probed (`_back`) so recovery is immediate."""
        pool = await self._get_pool()
        if self._degraded:
            pool = await self._back(pool)
            if time.monotonic() - self._failed_at < OUTAGE_S:
                wait_s = OUTAGE_WAIT_S if wait_s is None else min(wait_s, OUTAGE_WAIT_S)
        try:
            async with pool.connection(timeout=wait_s) as conn:
                self._degraded = False
                yield conn
        except (psycopg.OperationalError, PoolTimeout) as exc:
            self._failed_at, self._degraded = time.monotonic(), True
            raise StorageError(f"cannot reach PostgreSQL at {self.where}: {self._reason(exc)}") from None

    # -- sessions

    async def create_session(
        self, *, owner: str | None = None, session_id: str | None = None, title: str = ""
    ) -> SessionInfo:
        if session_id is not None and not session_id:
            raise ValueError("session_id must not be empty")
        if session_id is not None and "\x00" in session_id:
            raise ValueError("session_id must not contain NUL characters")
        sid = session_id or new_session_id()
        owner, title = _opt_text(owner), _text(title)
        now = time.time()
        async with self._connection() as conn, conn.transaction():
            cur = await conn.execute(
                "INSERT INTO tokenrelay_sessions (id, owner, title, created_at, updated_at)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING",
                (sid, owner, title, now, now),
            )
            if cur.rowcount == 0:
                raise ValueError(f"session {sid!r} already exists")
        return SessionInfo(id=sid, owner=owner, title=title, created_at=now, updated_at=now)

    async def get_session(self, session_id: str, *, owner: str | None = None) -> SessionInfo | None:
        if "\x00" in session_id:
            return None
        condition, params = _owner_filter(owner)
        async with self._connection() as conn:
            cur = await conn.execute(
                f"SELECT {_SESSION_COLUMNS} FROM tokenrelay_sessions WHERE id = %s AND {condition}",
                (session_id, *params),
            )
            row = await cur.fetchone()
        return None if row is None else _session(row)

    async def list_sessions(
        self, *, owner: str | None = None, limit: int = 100, after: str | None = None
    ) -> list[SessionInfo]:
        """Most recently updated first (ties: most recently created first); `after`: those
        after that session (keyset paging)."""
        if limit < 0:
            raise ValueError(f"limit must be 0 or more, not {limit}")
        condition, params = _owner_filter(owner)
        if after is not None:
            if "\x00" in after:
                return []
            condition = (
                f"{condition} AND (updated_at, seq) < (SELECT updated_at, seq FROM tokenrelay_sessions"
                f" WHERE id = %s AND {condition})"
            )
            params = (*params, after, *params)
        async with self._connection() as conn:
            cur = await conn.execute(
                f"SELECT {_SESSION_COLUMNS} FROM tokenrelay_sessions WHERE {condition}"
                " ORDER BY updated_at DESC, seq DESC LIMIT %s",
                (*params, limit),
            )
            rows = await cur.fetchall()
        return [_session(row) for row in rows]

    async def count_sessions(self, *, owner: str | None = None) -> int:
        condition, params = _owner_filter(owner)
        async with self._connection() as conn:
            cur = await conn.execute(f"SELECT count(*) FROM tokenrelay_sessions WHERE {condition}", params)
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def delete_session(self, session_id: str, *, owner: str | None = None) -> bool:
        """Delete the session, its turns and its document (one transaction)."""
        if "\x00" in session_id:
            return False
        condition, params = _owner_filter(owner)
        async with self._connection() as conn, conn.transaction():
            cur = await conn.execute(
                f"DELETE FROM tokenrelay_sessions WHERE id = %s AND {condition}", (session_id, *params)
            )
            return cur.rowcount > 0

    async def set_title(self, session_id: str, title: str, *, owner: str | None = None) -> SessionInfo | None:
        """Rename a session (its `updated_at` stays); None when it is not the owner's."""
        if "\x00" in session_id:
            return None
        condition, params = _owner_filter(owner)
        async with self._connection() as conn, conn.transaction():
            cur = await conn.execute(
                f"UPDATE tokenrelay_sessions SET title = %s WHERE id = %s AND {condition}"
                f" RETURNING {_SESSION_COLUMNS}",
                (_text(title), session_id, *params),
            )
            row = await cur.fetchone()
        return None if row is None else _session(row)

    # -- turns

    async def begin_turn(self, session_id: str, *, run_id: str, user_text: str) -> int:
        """Store the user's message as a `running` turn; return the turn id.

        Also bumps the session's `updated_at` and titles an untitled session after the
        message. Raises `KeyError` when the session does not exist."""
        if "\x00" in session_id:
            raise KeyError(session_id)
        now = time.time()
        # One statement: the UPDATE locks the session row (a concurrent delete waits) and
        # the INSERT happens only when it found the session.
        async with self._connection() as conn, conn.transaction():
            cur = await conn.execute(
                "WITH s AS ("
                " UPDATE tokenrelay_sessions SET updated_at = %(now)s,"
                " title = CASE WHEN title = '' THEN %(title)s ELSE title END"
                " WHERE id = %(sid)s RETURNING id)"
                " INSERT INTO tokenrelay_turns"
                " (session_id, run_id, user_text, answer, status, created_at, heartbeat_at)"
                f" SELECT s.id, %(run_id)s, %(text)s, '', 'running', %(now)s, {_SERVER_NOW} FROM s"
                " RETURNING id",
                {
                    "now": now,
                    "title": title_from_text(_text(user_text)),
                    "sid": session_id,
                    "run_id": _text(run_id),
                    "text": _text(user_text),
                },
            )
            row = await cur.fetchone()
        if row is None:
            raise KeyError(session_id)
        return cast(int, row[0])

    async def update_partial(self, turn_id: int, answer: str) -> None:
        """Checkpoint a running turn's partial answer and refresh its heartbeat (no-op once
        the turn is finished). With several workers, call it more often than the
        `older_than_s` given to `recover_running`, even when the answer has not grown."""
        if time.monotonic() < self._checkpoints_paused_until:
            return
        try:
            async with self._connection(wait_s=CHECKPOINT_TIMEOUT_S) as conn, conn.transaction():
                await conn.execute(
                    f"UPDATE tokenrelay_turns SET answer = %s, heartbeat_at = {_SERVER_NOW}"
                    " WHERE id = %s AND status = 'running'",
                    (_text(answer), turn_id),
                )
        except StorageError as exc:  # a checkpoint is best effort: the run goes on
            log.warning("checkpoint of turn %d failed: %s", turn_id, exc)
            self._checkpoints_paused_until = time.monotonic() + CHECKPOINT_PAUSE_S

    async def finish_turn(
        self,
        turn_id: int,
        *,
        answer: str,
        status: TurnStatus,
        error: str | None = None,
        finish_reason: str | None = None,
        steps: Sequence[Step] = (),
    ) -> None:
        """Store the final answer and status; a turn that is not `running` is left as is."""
        if status not in FINAL_STATUSES:
            raise ValueError(
                f"finish_turn needs a final status (complete, interrupted, failed), not {status!r}"
            )
        now = time.time()

        first = True

        async def update() -> None:
            nonlocal first
            wait_s, first = (FINISH_TIMEOUT_S if first else None), False
            async with self._connection(wait_s=wait_s) as conn, conn.transaction():
                await conn.execute(
                    "UPDATE tokenrelay_turns SET answer = %s, status = %s, error = %s, finished_at = %s,"
                    " finish_reason = %s, steps = %s WHERE id = %s AND status = 'running'",
                    (
                        _text(answer),
                        status,
                        _opt_text(error),
                        now,
                        finish_reason,
                        _text(dump_steps(steps)),
                        turn_id,
                    ),
                )

        # the answer must not be lost to a restarting server: retried until it lands
        await self._deferred.write(("finish", turn_id), update)

    async def history(
        self, session_id: str, *, limit: int | None = None, answered: bool = False
    ) -> list[Turn]:
        """The last `limit` turns (all when None), oldest first; `answered`: only those with
        an answer (the memory window; see `SessionStore.history`)."""
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be 0 or more, not {limit}")
        if "\x00" in session_id:
            return []
        where = "session_id = %s" + (" AND status <> 'running' AND answer <> ''" if answered else "")
        async with self._connection() as conn:
            cur = await conn.execute(
                f"SELECT {_TURN_COLUMNS} FROM (SELECT {_TURN_COLUMNS} FROM tokenrelay_turns"
                f" WHERE {where} ORDER BY id DESC LIMIT %s) AS last ORDER BY id ASC",
                (session_id, limit),
            )
            rows = await cur.fetchall()
        return [_turn(row) for row in rows]

    async def interrupt_run(self, run_id: str, *, error: str) -> bool:
        """Mark `run_id`'s turn interrupted if it is still running (its worker died; the
        checkpointed partial answer is kept); True if a turn changed."""
        now = time.time()
        async with self._connection() as conn, conn.transaction():
            cur = await conn.execute(
                "UPDATE tokenrelay_turns SET status = 'interrupted', error = %s, finished_at = %s"
                " WHERE run_id = %s AND status = 'running'",
                (_text(error), now, _text(run_id)),
            )
            return cur.rowcount > 0

    async def recover_running(self, older_than_s: float | None = None) -> int:
        """Mark turns left `running` by a crash as `interrupted` (keeping any checkpointed
        partial answer); return how many.

        `older_than_s=None`: every running turn (one worker: whatever runs now is an orphan).
        Otherwise only the turns whose heartbeat (`begin_turn`, `update_partial`; the
        database server's clock) is more than `older_than_s` seconds old: other live
        workers' turns are left alone as long as they checkpoint more often than that."""
        if older_than_s is not None and not older_than_s >= 0:
            raise ValueError(f"older_than_s must be 0 or more, not {older_than_s}")
        now = time.time()
        async with self._connection() as conn, conn.transaction():
            if older_than_s is None:
                cur = await conn.execute(
                    "UPDATE tokenrelay_turns SET status = 'interrupted', error = %s, finished_at = %s"
                    " WHERE status = 'running'",
                    (RECOVERED_ERROR, now),
                )
            else:
                cur = await conn.execute(
                    "UPDATE tokenrelay_turns SET status = 'interrupted', error = %s, finished_at = %s"
                    f" WHERE status = 'running' AND heartbeat_at < {_SERVER_NOW} - %s",
                    (RECOVERED_ERROR, now, float(older_than_s)),
                )
            return cur.rowcount

    # -- documents

    async def set_document(
        self,
        session_id: str,
        *,
        name: str,
        text: str,
        total_chars: int | None = None,
        total_tokens: int | None = None,
        budget_tokens: int | None = None,
    ) -> None:
        """Attach (or replace) the session's document. Raises `KeyError` for a missing session."""
        if "\x00" in session_id:
            raise KeyError(session_id)
        now = time.time()
        try:
            async with self._connection() as conn, conn.transaction():
                cur = await conn.execute(
                    "INSERT INTO tokenrelay_documents"
                    " (session_id, name, text, created_at, total_chars, total_tokens, budget_tokens)"
                    " SELECT id, %s, %s, %s, %s, %s, %s FROM tokenrelay_sessions WHERE id = %s"
                    " ON CONFLICT (session_id) DO UPDATE SET"
                    " name = excluded.name, text = excluded.text, created_at = excluded.created_at,"
                    " total_chars = excluded.total_chars, total_tokens = excluded.total_tokens,"
                    " budget_tokens = excluded.budget_tokens",
                    (_text(name), _text(text), now, total_chars, total_tokens, budget_tokens, session_id),
                )
                if cur.rowcount == 0:
                    raise KeyError(session_id)
        except psycopg.errors.ForeignKeyViolation:  # the session was deleted meanwhile
            raise KeyError(session_id) from None

    async def get_document(self, session_id: str) -> Document | None:
        if "\x00" in session_id:
            return None
        async with self._connection() as conn:
            cur = await conn.execute(
                "SELECT name, text, created_at, total_chars, total_tokens, budget_tokens"
                " FROM tokenrelay_documents WHERE session_id = %s",
                (session_id,),
            )
            row = await cur.fetchone()
        if row is None:
            return None
        name, text, created_at, total_chars, total_tokens, budget_tokens = row
        return Document(
            name=name,
            text=text,
            created_at=created_at,
            total_chars=total_chars,
            total_tokens=total_tokens,
            budget_tokens=budget_tokens,
        )

    # -- maintenance

    async def integrity_check(self) -> str:
        """`ok` when the database answers and every migration (and table) is in place; else
        the problems, one a line (an unreachable server is a problem, not an exception)."""
        try:
            async with self._connection() as conn:
                await conn.execute("SELECT 1")
                cur = await conn.execute(
                    "SELECT to_regclass(name) IS NOT NULL FROM unnest(%s::text[]) AS name",
                    (["tokenrelay_migrations", *TABLES],),
                )
                present = [bool(row[0]) for row in await cur.fetchall()]
                if not present[0]:
                    return "the tokenrelay_migrations table is missing"
                cur = await conn.execute("SELECT name FROM tokenrelay_migrations")
                done = {row[0] for row in await cur.fetchall()}
        except (ConfigError, StorageError) as exc:
            return str(exc)
        except (psycopg.OperationalError, PoolTimeout) as exc:
            return f"cannot reach PostgreSQL at {self.where}: {self._reason(exc)}"
        problems = [
            f"table {table} is missing" for table, ok in zip(TABLES, present[1:], strict=True) if not ok
        ]
        missing = [name for name, _ in MIGRATIONS if name not in done]
        if missing:
            problems.insert(0, "migrations not applied: " + ", ".join(missing))
        return "\n".join(problems) or "ok"

    async def close(self) -> None:
        """Close the pool; calling it again does nothing. The store refuses work afterwards."""
        if not self._closed and self._pool is not None:
            await self._deferred.close()
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()


# --------------------------------------------------------------------------- secrets


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _redact_url(url: str) -> str:
    """The URL with any password replaced by `***`."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://[^/@:]*:)[^/@]*@", r"\1***@", url)


def _secret_forms(url: str, password: object) -> tuple[str, ...]:
    """The strings that must never be shown: the password as given and as URL-encoded."""
    forms: set[str] = set()
    match = re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/@:]*:([^/@]*)@", url)
    if match and match.group(1):
        forms.add(match.group(1))
    for value in (password, os.environ.get("PGPASSWORD")):
        if isinstance(value, str) and value:
            forms.update({value, quote(value, safe="")})
    return tuple(sorted(forms, key=len, reverse=True))
