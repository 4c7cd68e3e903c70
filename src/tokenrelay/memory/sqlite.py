"""`SessionStore` on one SQLite file (stdlib `sqlite3`): the default, zero-setup storage.

Invariants:

* Every public method is `async` and runs its blocking work in a worker thread
  (`asyncio.to_thread`): the event loop is never blocked on disk I/O.
* One connection per store, guarded by a `threading.Lock`; every write is one
  `BEGIN IMMEDIATE ... COMMIT` transaction, so it is atomic and takes the write lock up
  front (no deadlock when two processes upgrade a read lock at the same time).
* WAL journal, `synchronous=NORMAL`, `foreign_keys=ON` and a 5 s busy timeout: two server
  workers (two processes) can share one file; readers never block the writer.
* The schema is built by an ordered list of migrations recorded in `_migrations`; each
  missing one is applied, all in one transaction, when the store opens. Re-opening is a no-op.
* Operational failures (disk full, a lock held past the busy timeout) raise `StorageError`;
  a checkpoint that fails is skipped, a final turn write that fails is retried in the
  background until the disk has room again (memory/deferred.py).
* A finished turn is never rewritten: `finish_turn` and `update_partial` only touch turns
  whose status is still `running` (a late writer after `recover_running` changes nothing).
* A session of another owner behaves exactly like a missing one (`owner=None` sees only
  sessions without owner).

The small helpers shared with `InMemorySessionStore` (`new_session_id`, `title_from_text`,
`RECOVERED_ERROR`) live here.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar, cast

from tokenrelay.errors import StorageError
from tokenrelay.memory.base import Document, SessionInfo, Step, Turn, TurnStatus
from tokenrelay.memory.deferred import DeferredWrites

__all__ = [
    "FINAL_STATUSES",
    "MIGRATIONS",
    "RECOVERED_ERROR",
    "SQLiteSessionStore",
    "new_session_id",
    "title_from_text",
]

T = TypeVar("T")
log = logging.getLogger("tokenrelay.memory")

#: The error stored on turns that `recover_running` marks `interrupted`.
RECOVERED_ERROR = "server stopped before the run finished"
#: The statuses `finish_turn` accepts.
FINAL_STATUSES: frozenset[str] = frozenset({"complete", "interrupted", "failed"})
TITLE_CHARS = 60
BUSY_TIMEOUT_S = 5.0


def new_session_id() -> str:
    """A fresh unguessable session id (128 random bits)."""
    return "s_" + secrets.token_urlsafe(16)


def title_from_text(text: str) -> str:
    """A session title from the first message: one line, at most 60 characters."""
    return " ".join(text.split())[:TITLE_CHARS]


# --------------------------------------------------------------------------- migrations


def _m0001_initial(conn: sqlite3.Connection) -> None:
    conn.execute(
        """CREATE TABLE sessions (
            id TEXT PRIMARY KEY,
            owner TEXT NULL,
            title TEXT NOT NULL DEFAULT '',
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )"""
    )
    conn.execute(
        """CREATE TABLE turns (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            session_id TEXT NOT NULL REFERENCES sessions(id) ON DELETE CASCADE,
            run_id TEXT NOT NULL,
            user_text TEXT NOT NULL,
            answer TEXT NOT NULL DEFAULT '',
            status TEXT NOT NULL CHECK (status IN ('running', 'complete', 'interrupted', 'failed')),
            error TEXT NULL,
            created_at REAL NOT NULL,
            finished_at REAL NULL
        )"""
    )
    conn.execute(
        """CREATE TABLE documents (
            session_id TEXT PRIMARY KEY REFERENCES sessions(id) ON DELETE CASCADE,
            name TEXT NOT NULL,
            text TEXT NOT NULL,
            created_at REAL NOT NULL
        )"""
    )


def _m0002_indexes(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE INDEX IF NOT EXISTS turns_by_session ON turns (session_id, id)")
    conn.execute("CREATE INDEX IF NOT EXISTS sessions_by_owner ON sessions (owner, updated_at)")
    # `recover_running` scans for running turns at every start: keep that cheap.
    conn.execute("CREATE INDEX IF NOT EXISTS turns_running ON turns (status) WHERE status = 'running'")


def _m0003_turn_finish_reason_steps(conn: sqlite3.Connection) -> None:
    conn.execute("ALTER TABLE turns ADD COLUMN finish_reason TEXT NULL")
    conn.execute("ALTER TABLE turns ADD COLUMN steps TEXT NOT NULL DEFAULT '[]'")


def _m0004_document_cut(conn: sqlite3.Connection) -> None:
    # what fitting a document to the context window left out (NULL: stored whole, or before)
    for column in ("total_chars", "total_tokens", "budget_tokens"):
        conn.execute(f"ALTER TABLE documents ADD COLUMN {column} INTEGER NULL")


def _m0101_answered_turns(conn: sqlite3.Connection) -> None:
    # the memory window reads the last k turns with an answer: exact, however many failed
    conn.execute(
        "CREATE INDEX IF NOT EXISTS turns_answered ON turns (session_id, id)"
        " WHERE status != 'running' AND answer != ''"
    )


#: Applied in this order; a name, once released, never changes meaning. Append only.
MIGRATIONS: list[tuple[str, Callable[[sqlite3.Connection], None]]] = [
    ("0001_initial", _m0001_initial),
    ("0002_indexes", _m0002_indexes),
    ("0003_turn_finish_reason_steps", _m0003_turn_finish_reason_steps),
    ("0004_document_cut", _m0004_document_cut),
    ("0101_answered_turns", _m0101_answered_turns),
]


def apply_migrations(
    conn: sqlite3.Connection,
    migrations: list[tuple[str, Callable[[sqlite3.Connection], None]]] | None = None,
) -> list[str]:
    """Apply the missing migrations in one transaction; return the names applied.

    `conn` must be in autocommit mode (`isolation_level=None`)."""
    migrations = MIGRATIONS if migrations is None else migrations
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)"
        )
        done = {row[0] for row in conn.execute("SELECT name FROM _migrations")}
        applied: list[str] = []
        for name, migrate in migrations:
            if name in done:
                continue
            migrate(conn)
            conn.execute("INSERT INTO _migrations (name, applied_at) VALUES (?, ?)", (name, time.time()))
            applied.append(name)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return applied


# --------------------------------------------------------------------------- the store

_SESSION_COLUMNS = "id, owner, title, created_at, updated_at"
_TURN_COLUMNS = (
    "id, session_id, run_id, user_text, answer, status, error, created_at, finished_at, finish_reason, steps"
)
#: the turns that have an answer: what the memory window holds (matches `turns_answered`)
_ANSWERED = " AND status != 'running' AND answer != ''"


def _session(row: tuple[object, ...]) -> SessionInfo:
    id_, owner, title, created_at, updated_at = row
    return SessionInfo(
        id=cast(str, id_),
        owner=cast("str | None", owner),
        title=cast(str, title),
        created_at=cast(float, created_at),
        updated_at=cast(float, updated_at),
    )


def _turn(row: tuple[object, ...]) -> Turn:
    id_, session_id, run_id, user_text, answer, status, error, created_at, finished_at, reason, steps = row
    return Turn(
        id=cast(int, id_),
        session_id=cast(str, session_id),
        run_id=cast(str, run_id),
        user_text=cast(str, user_text),
        answer=cast(str, answer),
        status=cast(TurnStatus, status),
        error=cast("str | None", error),
        created_at=cast(float, created_at),
        finished_at=cast("float | None", finished_at),
        finish_reason=cast("str | None", reason),
        steps=load_steps(cast(str, steps)),
    )


def dump_steps(steps: Sequence[Step]) -> str:
    return json.dumps(list(steps), ensure_ascii=False, separators=(",", ":"))


def load_steps(text: str | None) -> tuple[Step, ...]:
    if not text:
        return ()
    try:
        value = json.loads(text)
    except ValueError:
        return ()
    return tuple(step for step in value if isinstance(step, dict)) if isinstance(value, list) else ()


class SQLiteSessionStore:
    """Sessions, turns and documents in one SQLite file (or `":memory:"`)."""

    def __init__(self, path: str | Path) -> None:
        self.path = path if str(path) == ":memory:" else Path(path).expanduser()
        if isinstance(self.path, Path):
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.Lock()
        conn = sqlite3.connect(
            str(self.path), timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            apply_migrations(conn)
        except BaseException:
            conn.close()
            raise
        self._conn: sqlite3.Connection | None = conn
        self._deferred = DeferredWrites()

    def __repr__(self) -> str:
        return f"SQLiteSessionStore({str(self.path)!r})"

    # -- plumbing: run under the lock, in a worker thread

    def _require(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("the session store is closed")
        return self._conn

    def _read_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            return fn(self._require())

    def _write_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            conn = self._require()
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return result

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return await asyncio.to_thread(self._read_sync, fn)
        except sqlite3.OperationalError as exc:
            raise StorageError(f"the session database failed: {exc}") from exc

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return await asyncio.to_thread(self._write_sync, fn)
        except sqlite3.OperationalError as exc:  # disk full, locked past the busy timeout, I/O
            raise StorageError(f"the session database cannot be written: {exc}") from exc

    # -- sessions

    async def create_session(
        self, *, owner: str | None = None, session_id: str | None = None, title: str = ""
    ) -> SessionInfo:
        if session_id is not None and not session_id:
            raise ValueError("session_id must not be empty")
        sid = session_id or new_session_id()
        now = time.time()
        info = SessionInfo(id=sid, owner=owner, title=title, created_at=now, updated_at=now)

        def insert(conn: sqlite3.Connection) -> None:
            try:
                conn.execute(
                    "INSERT INTO sessions (id, owner, title, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
                    (sid, owner, title, now, now),
                )
            except sqlite3.IntegrityError:
                raise ValueError(f"session {sid!r} already exists") from None

        await self._write(insert)
        return info

    async def get_session(self, session_id: str, *, owner: str | None = None) -> SessionInfo | None:
        def select(conn: sqlite3.Connection) -> SessionInfo | None:
            row = conn.execute(
                f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE id = ? AND owner IS ?", (session_id, owner)
            ).fetchone()
            return None if row is None else _session(row)

        return await self._read(select)

    async def list_sessions(
        self, *, owner: str | None = None, limit: int = 100, after: str | None = None
    ) -> list[SessionInfo]:
        """Most recently updated first; `after`: those after that session (keyset paging)."""
        if limit < 0:
            raise ValueError(f"limit must be 0 or more, not {limit}")
        where, params = "owner IS ?", [owner]
        if after is not None:
            where += (
                " AND (updated_at, rowid) <"
                " (SELECT updated_at, rowid FROM sessions WHERE id = ? AND owner IS ?)"
            )
            params += [after, owner]

        def select(conn: sqlite3.Connection) -> list[SessionInfo]:
            rows = conn.execute(
                f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE {where}"
                " ORDER BY updated_at DESC, rowid DESC LIMIT ?",
                (*params, limit),
            ).fetchall()
            return [_session(row) for row in rows]

        return await self._read(select)

    async def count_sessions(self, *, owner: str | None = None) -> int:
        def count(conn: sqlite3.Connection) -> int:
            return int(conn.execute("SELECT count(*) FROM sessions WHERE owner IS ?", (owner,)).fetchone()[0])

        return await self._read(count)

    async def delete_session(self, session_id: str, *, owner: str | None = None) -> bool:
        def delete(conn: sqlite3.Connection) -> bool:
            cur = conn.execute("DELETE FROM sessions WHERE id = ? AND owner IS ?", (session_id, owner))
            return cur.rowcount > 0

        return await self._write(delete)

    async def set_title(self, session_id: str, title: str, *, owner: str | None = None) -> SessionInfo | None:
        """Rename a session (its `updated_at` stays); None when it is not the owner's."""

        def update(conn: sqlite3.Connection) -> SessionInfo | None:
            conn.execute(
                "UPDATE sessions SET title = ? WHERE id = ? AND owner IS ?", (title, session_id, owner)
            )
            row = conn.execute(
                f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE id = ? AND owner IS ?", (session_id, owner)
            ).fetchone()
            return None if row is None else _session(row)

        return await self._write(update)

    # -- turns

    async def begin_turn(self, session_id: str, *, run_id: str, user_text: str) -> int:
        """Store the user's message as a `running` turn; return the turn id.

        Also bumps the session's `updated_at` and titles an untitled session after the
        message. Raises `KeyError` when the session does not exist."""
        now = time.time()

        def insert(conn: sqlite3.Connection) -> int:
            if conn.execute("SELECT 1 FROM sessions WHERE id = ?", (session_id,)).fetchone() is None:
                raise KeyError(session_id)
            cur = conn.execute(
                "INSERT INTO turns (session_id, run_id, user_text, answer, status, created_at)"
                " VALUES (?, ?, ?, '', 'running', ?)",
                (session_id, run_id, user_text, now),
            )
            conn.execute(
                "UPDATE sessions SET updated_at = ?, title = CASE WHEN title = '' THEN ? ELSE title END"
                " WHERE id = ?",
                (now, title_from_text(user_text), session_id),
            )
            return cast(int, cur.lastrowid)

        return await self._write(insert)

    async def update_partial(self, turn_id: int, answer: str) -> None:
        """Checkpoint a running turn's partial answer (no-op once the turn is finished)."""

        def update(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE turns SET answer = ? WHERE id = ? AND status = 'running'", (answer, turn_id))

        try:
            await self._write(update)
        except StorageError as exc:  # a checkpoint is best effort: the run goes on
            log.warning("checkpoint of turn %d failed: %s", turn_id, exc)

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

        def update(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE turns SET answer = ?, status = ?, error = ?, finished_at = ?, finish_reason = ?,"
                " steps = ? WHERE id = ? AND status = 'running'",
                (answer, status, error, now, finish_reason, dump_steps(steps), turn_id),
            )

        # the answer must not be lost to a full disk: retried until it lands (memory/deferred.py)
        await self._deferred.write(("finish", turn_id), lambda: self._write(update))

    async def history(
        self, session_id: str, *, limit: int | None = None, answered: bool = False
    ) -> list[Turn]:
        """The last `limit` turns (all when None), oldest first; `answered`: only those with
        an answer (the memory window; see `SessionStore.history`)."""
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be 0 or more, not {limit}")
        where = "session_id = ?" + (_ANSWERED if answered else "")

        def select(conn: sqlite3.Connection) -> list[Turn]:
            rows = conn.execute(
                f"SELECT {_TURN_COLUMNS} FROM (SELECT {_TURN_COLUMNS} FROM turns WHERE {where}"
                " ORDER BY id DESC LIMIT ?) ORDER BY id ASC",
                (session_id, -1 if limit is None else limit),
            ).fetchall()
            return [_turn(row) for row in rows]

        return await self._read(select)

    async def interrupt_run(self, run_id: str, *, error: str) -> bool:
        """Mark `run_id`'s turn interrupted if it is still running (keeps the checkpoint)."""
        now = time.time()

        def update(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "UPDATE turns SET status = 'interrupted', error = ?, finished_at = ?"
                " WHERE run_id = ? AND status = 'running'",
                (error, now, run_id),
            )
            return cur.rowcount > 0

        return await self._write(update)

    async def recover_running(self) -> int:
        """Mark turns left `running` by a crash as `interrupted` (keeping any checkpointed
        partial answer); return how many."""
        now = time.time()

        def update(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                "UPDATE turns SET status = 'interrupted', error = ?, finished_at = ?"
                " WHERE status = 'running'",
                (RECOVERED_ERROR, now),
            )
            return cur.rowcount

        return await self._write(update)

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
        now = time.time()

        def upsert(conn: sqlite3.Connection) -> None:
            if conn.execute("SELECT 1 FROM sessions WHERE id = ?", (session_id,)).fetchone() is None:
                raise KeyError(session_id)
            conn.execute(
                "INSERT INTO documents (session_id, name, text, created_at, total_chars, total_tokens,"
                " budget_tokens) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (session_id) DO UPDATE SET"
                " name = excluded.name, text = excluded.text, created_at = excluded.created_at,"
                " total_chars = excluded.total_chars, total_tokens = excluded.total_tokens,"
                " budget_tokens = excluded.budget_tokens",
                (session_id, name, text, now, total_chars, total_tokens, budget_tokens),
            )

        await self._write(upsert)

    async def get_document(self, session_id: str) -> Document | None:
        def select(conn: sqlite3.Connection) -> Document | None:
            row = conn.execute(
                "SELECT name, text, created_at, total_chars, total_tokens, budget_tokens"
                " FROM documents WHERE session_id = ?",
                (session_id,),
            ).fetchone()
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

        return await self._read(select)

    # -- maintenance

    async def integrity_check(self) -> str:
        """`PRAGMA integrity_check`: "ok" for a sound file, else the problems, one a line."""

        def check(conn: sqlite3.Connection) -> str:
            return "\n".join(str(row[0]) for row in conn.execute("PRAGMA integrity_check"))

        return await self._read(check)

    async def close(self) -> None:
        """Close the connection (after a last try of deferred writes); calling it again does
        nothing."""
        if self._conn is not None:
            await self._deferred.close()

        def close_sync() -> None:
            with self._lock:
                conn, self._conn = self._conn, None
                if conn is not None:
                    conn.close()

        await asyncio.to_thread(close_sync)
