"""`SessionStore` on PostgreSQL (psycopg 3 + `psycopg_pool`): for several server workers,
possibly on several hosts, sharing one database. Needs the `postgres` extra.

Invariants (the same behaviour as `SQLiteSessionStore`; the SQLite test suite runs against it):

* `PostgresSessionStore(url)` does no I/O: its connection pool (postgres/pool.py) opens on
  first use, in the running event loop, after the migrations (postgres/migrations.py) are
  applied. Failing to connect raises `ConfigError("cannot connect to PostgreSQL at
  host:port/db: <reason>")`. The password never appears in an exception, a log line or `repr()`.
* Every table is prefixed (`tokenrelay_sessions`, `tokenrelay_turns`, `tokenrelay_documents`,
  `tokenrelay_migrations`) and every name is unqualified, so a shared database is fine and
  `?options=-csearch_path%3Dmyschema` in the URL puts everything in a schema of its own.
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

import logging
import time

import psycopg
from psycopg_pool import PoolTimeout

from tokenrelay.errors import ConfigError, StorageError
from tokenrelay.memory import common, rows
from tokenrelay.memory.base import ANY_OWNER, AnyOwner, Document, OpenedTurn, SessionInfo, Turn
from tokenrelay.memory.deferred import DeferredWrites
from tokenrelay.memory.postgres.migrations import schema_problems
from tokenrelay.memory.postgres.pool import PgPool
from tokenrelay.memory.postgres.statements import SERVER_NOW as _SERVER_NOW
from tokenrelay.memory.postgres.statements import insert_turn, select_document, select_history
from tokenrelay.memory.postgres.statements import opt_text as _opt_text
from tokenrelay.memory.postgres.statements import owner_filter as _owner_filter
from tokenrelay.memory.postgres.statements import text as _text

__all__ = ["PostgresSessionStore"]

log = logging.getLogger("tokenrelay.memory")

#: Seconds a checkpoint waits for a connection (it is skipped after that: best effort).
CHECKPOINT_TIMEOUT_S = 2.0
#: After a failed checkpoint, checkpoints are skipped this long (a run must not stall on each
#: one while the server is away).
CHECKPOINT_PAUSE_S = 5.0
#: Seconds the first try of a turn's final write waits before it is deferred (the run's last
#: event waits for it).
FINISH_TIMEOUT_S = 2.0


class PostgresSessionStore(common.StoreBase):
    """Sessions, turns and documents in PostgreSQL tables, through a connection pool."""

    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 10) -> None:
        self._db = PgPool(url, min_size=min_size, max_size=max_size)
        self._connection = self._db.connection
        self._deferred = DeferredWrites()
        self._checkpoints_paused_until = 0.0

    def __repr__(self) -> str:
        return f"PostgresSessionStore({self._db.shown_url!r})"

    @property
    def where(self) -> str:
        """`host:port/db`, for messages."""
        return self._db.where

    # -- sessions

    async def create_session(
        self, *, owner: str | None = None, session_id: str | None = None, title: str = ""
    ) -> SessionInfo:
        if session_id is not None and not session_id:
            raise ValueError("session_id must not be empty")
        if session_id is not None and "\x00" in session_id:
            raise ValueError("session_id must not contain NUL characters")
        sid = session_id or common.new_session_id()
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
                f"SELECT {rows.SESSION_COLUMNS} FROM tokenrelay_sessions WHERE id = %s AND {condition}",
                (session_id, *params),
            )
            row = await cur.fetchone()
        return None if row is None else rows.session_from_row(row)

    async def list_sessions(
        self, *, owner: str | None = None, limit: int = 100, after: str | None = None
    ) -> list[SessionInfo]:
        """Most recently updated first (ties: most recently created first); `after`: those
        after that session (keyset paging)."""
        common.check_limit(limit)
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
                f"SELECT {rows.SESSION_COLUMNS} FROM tokenrelay_sessions WHERE {condition}"
                " ORDER BY updated_at DESC, seq DESC LIMIT %s",
                (*params, limit),
            )
            found = await cur.fetchall()
        return [rows.session_from_row(row) for row in found]

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
                f" RETURNING {rows.SESSION_COLUMNS}",
                (_text(title), session_id, *params),
            )
            row = await cur.fetchone()
        return None if row is None else rows.session_from_row(row)

    # -- turns

    async def begin_turn(self, session_id: str, *, run_id: str, user_text: str) -> int:
        """Store the user's message as a `running` turn; return the turn id.

        Also bumps the session's `updated_at` and titles an untitled session after the
        message. Raises `KeyError` when the session does not exist."""
        if "\x00" in session_id:
            raise KeyError(session_id)
        async with self._connection() as conn, conn.transaction():
            turn_id = await insert_turn(conn, session_id, ANY_OWNER, run_id, user_text, time.time())
        if turn_id is None:
            raise KeyError(session_id)
        return turn_id

    async def open_turn(
        self,
        session_id: str | None,
        *,
        owner: str | None | AnyOwner = None,
        run_id: str,
        user_text: str,
        window: int = 0,
        document: bool = True,
        create: bool = False,
    ) -> OpenedTurn:
        """`TurnOpener.open_turn` in one hop: one connection checkout, one transaction (the
        session's creation, the turn, the memory window and the document)."""
        common.check_window(window)
        if session_id is not None and "\x00" in session_id:
            raise (ValueError(f"invalid session id {session_id!r}") if create else KeyError(session_id))
        if create and not session_id:
            raise ValueError("session_id must not be empty")
        now = time.time()
        sid = session_id or common.new_session_id()
        async with self._connection() as conn, conn.transaction():
            if session_id is None or create:
                cur = await conn.execute(
                    "INSERT INTO tokenrelay_sessions (id, owner, title, created_at, updated_at)"
                    " VALUES (%s, %s, '', %s, %s) ON CONFLICT (id) DO NOTHING",
                    (sid, None if isinstance(owner, AnyOwner) else _opt_text(owner), now, now),
                )
                if cur.rowcount == 0:
                    raise ValueError(f"session {sid!r} already exists")
            turn_id = await insert_turn(conn, sid, owner, run_id, user_text, now)
            if turn_id is None:
                raise KeyError(sid)
            old = not (session_id is None or create)  # a new session has no turns, no document yet
            history = await select_history(conn, sid, window, answered=True) if window and old else []
            doc = await select_document(conn, sid) if document and old else None
        return OpenedTurn(session_id=sid, history=history, document=doc, turn_id=turn_id)

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

    async def _finish(self, turn_id: int, final: common.FinalTurn) -> None:
        first = True

        async def update() -> None:
            nonlocal first
            wait_s, first = (FINISH_TIMEOUT_S if first else None), False
            async with self._connection(wait_s=wait_s) as conn, conn.transaction():
                await conn.execute(
                    "UPDATE tokenrelay_turns SET answer = %s, status = %s, error = %s, finished_at = %s,"
                    " finish_reason = %s, steps = %s WHERE id = %s AND status = 'running'",
                    (
                        _text(final.answer),
                        final.status,
                        _opt_text(final.error),
                        final.finished_at,
                        final.finish_reason,
                        _text(rows.dump_steps(final.steps)),
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
        common.check_limit(limit)
        if "\x00" in session_id:
            return []
        async with self._connection() as conn:
            return await select_history(conn, session_id, limit, answered=answered)

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
                    (common.RECOVERED_ERROR, now),
                )
            else:
                cur = await conn.execute(
                    "UPDATE tokenrelay_turns SET status = 'interrupted', error = %s, finished_at = %s"
                    f" WHERE status = 'running' AND heartbeat_at < {_SERVER_NOW} - %s",
                    (common.RECOVERED_ERROR, now, float(older_than_s)),
                )
            return cur.rowcount

    # -- documents

    async def _put_document(self, session_id: str, document: Document) -> None:
        if "\x00" in session_id:
            raise KeyError(session_id)
        try:
            async with self._connection() as conn, conn.transaction():
                cur = await conn.execute(
                    f"INSERT INTO tokenrelay_documents (session_id, {rows.DOCUMENT_COLUMNS})"
                    " SELECT id, %s, %s, %s, %s, %s, %s FROM tokenrelay_sessions WHERE id = %s"
                    " ON CONFLICT (session_id) DO UPDATE SET"
                    " name = excluded.name, text = excluded.text, created_at = excluded.created_at,"
                    " total_chars = excluded.total_chars, total_tokens = excluded.total_tokens,"
                    " budget_tokens = excluded.budget_tokens",
                    (
                        _text(document.name),
                        _text(document.text),
                        document.created_at,
                        document.total_chars,
                        document.total_tokens,
                        document.budget_tokens,
                        session_id,
                    ),
                )
                if cur.rowcount == 0:
                    raise KeyError(session_id)
        except psycopg.errors.ForeignKeyViolation:  # the session was deleted meanwhile
            raise KeyError(session_id) from None

    async def get_document(self, session_id: str) -> Document | None:
        if "\x00" in session_id:
            return None
        async with self._connection() as conn:
            return await select_document(conn, session_id)

    # -- maintenance

    async def integrity_check(self) -> str:
        """`ok` when the database answers and every migration (and table) is in place; else
        the problems, one a line (an unreachable server is a problem, not an exception)."""
        try:
            async with self._connection() as conn:
                return await schema_problems(conn)
        except (ConfigError, StorageError) as exc:
            return str(exc)
        except (psycopg.OperationalError, PoolTimeout) as exc:
            return f"cannot reach PostgreSQL at {self.where}: {self._db.reason(exc)}"

    async def close(self) -> None:
        """Close the pool (after a last try of deferred writes); calling it again does
        nothing. The store refuses work afterwards."""
        if self._db.in_use:
            await self._deferred.close()
        await self._db.close()
