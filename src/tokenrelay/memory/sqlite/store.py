"""`SessionStore` on one SQLite file (stdlib `sqlite3`): the default, zero-setup storage.

Invariants:

* Every public method is `async`; blocking work runs off the event loop: reads on the store's
  one reader thread, writes on its one writer thread (sqlite/worker.py). Reads share the one
  connection under the lock, so a second reader thread would only wait: the store's threads are
  two, whatever the load (not a share of the loop's default executor, which grows with it).
* One connection per store, guarded by a `threading.Lock`. Writes are queued to the writer
  thread, which commits every write waiting in one `BEGIN IMMEDIATE ... COMMIT` (taking the
  write lock up front: no deadlock when two processes upgrade a read lock at the same time);
  a failing batch is retried write by write, so each write is still atomic and independent.
* Checkpoints (`update_partial`) are queued and not awaited: the streaming path never waits
  on the disk. A read of running turns first waits for the checkpoints queued before it (read
  your writes); other reads (sessions, documents, the memory window), which checkpoints never
  touch, do not.
* WAL journal, `synchronous=NORMAL`, `foreign_keys=ON` and a 5 s busy timeout: two server
  workers (two processes) can share one file; readers never block the writer.
* The schema is built by the migrations of sqlite/migrations.py, applied when the store opens.
* Operational failures (disk full, a lock held past the busy timeout) raise `StorageError`;
  a checkpoint that fails is logged and skipped, a final turn write that fails is retried in
  the background until the disk has room again (memory/deferred.py).
* A finished turn is never rewritten: `finish_turn` and `update_partial` only touch turns
  whose status is still `running` (a late writer after `recover_running` changes nothing).
* A session of another owner behaves exactly like a missing one (`owner=None` sees only
  sessions without owner).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar, cast

from tokenrelay.errors import StorageError
from tokenrelay.memory import common, rows
from tokenrelay.memory.base import ANY_OWNER, AnyOwner, Document, OpenedTurn, SessionInfo, Turn
from tokenrelay.memory.deferred import DeferredWrites
from tokenrelay.memory.sqlite import statements
from tokenrelay.memory.sqlite.checkpoints import Checkpoints
from tokenrelay.memory.sqlite.migrations import apply_migrations
from tokenrelay.memory.sqlite.worker import WriteWorker

__all__ = ["SQLiteSessionStore"]

T = TypeVar("T")
log = logging.getLogger("tokenrelay.memory")

BUSY_TIMEOUT_S = 5.0


class SQLiteSessionStore(common.StoreBase):
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
        self._writer = WriteWorker(self._require, self._lock)
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="tokenrelay-sqlite-read")
        self._checkpoints = Checkpoints(self._writer)
        self._deferred = DeferredWrites()

    def __repr__(self) -> str:
        return f"SQLiteSessionStore({str(self.path)!r})"

    # -- plumbing: reads under the lock on the reader thread, writes on the writer thread

    def _require(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("the session store is closed")
        return self._conn

    def _read_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            return fn(self._require())

    async def _read(self, fn: Callable[[sqlite3.Connection], T], *, turns: bool = False) -> T:
        """Run `fn` in a thread. `turns`: `fn` reads running turns' answers, so it runs after
        the checkpoints queued so far have landed (the only writes nobody awaits); any other
        read never waits on the writer (a request's session lookup, a run's memory window must
        not queue behind every stream's checkpoint)."""
        try:
            if turns:
                self._checkpoints.queue()
                await self._writer.settled()
            if self._conn is None:  # (its reader thread is gone too: say what `_require` says)
                raise RuntimeError("the session store is closed")
            return await asyncio.get_running_loop().run_in_executor(self._reader, self._read_sync, fn)
        except sqlite3.OperationalError as exc:
            raise StorageError(f"the session database failed: {exc}") from exc

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        try:
            return await self._writer.write(fn)
        except sqlite3.OperationalError as exc:  # disk full, locked past the busy timeout, I/O
            raise StorageError(f"the session database cannot be written: {exc}") from exc

    # -- sessions

    async def create_session(
        self, *, owner: str | None = None, session_id: str | None = None, title: str = ""
    ) -> SessionInfo:
        if session_id is not None and not session_id:
            raise ValueError("session_id must not be empty")
        sid = session_id or common.new_session_id()
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
                f"SELECT {rows.SESSION_COLUMNS} FROM sessions WHERE id = ? AND owner IS ?",
                (session_id, owner),
            ).fetchone()
            return None if row is None else rows.session_from_row(row)

        return await self._read(select)

    async def list_sessions(
        self, *, owner: str | None = None, limit: int = 100, after: str | None = None
    ) -> list[SessionInfo]:
        """Most recently updated first; `after`: those after that session (keyset paging)."""
        common.check_limit(limit)
        where, params = "owner IS ?", [owner]
        if after is not None:
            where += (
                " AND (updated_at, rowid) <"
                " (SELECT updated_at, rowid FROM sessions WHERE id = ? AND owner IS ?)"
            )
            params += [after, owner]

        def select(conn: sqlite3.Connection) -> list[SessionInfo]:
            found = conn.execute(
                f"SELECT {rows.SESSION_COLUMNS} FROM sessions WHERE {where}"
                " ORDER BY updated_at DESC, rowid DESC LIMIT ?",
                (*params, limit),
            ).fetchall()
            return [rows.session_from_row(row) for row in found]

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
                f"SELECT {rows.SESSION_COLUMNS} FROM sessions WHERE id = ? AND owner IS ?",
                (session_id, owner),
            ).fetchone()
            return None if row is None else rows.session_from_row(row)

        return await self._write(update)

    # -- turns

    async def begin_turn(self, session_id: str, *, run_id: str, user_text: str) -> int:
        """Store the user's message as a `running` turn; return the turn id.

        Also bumps the session's `updated_at` and titles an untitled session after the
        message. Raises `KeyError` when the session does not exist."""
        now = time.time()

        def insert(conn: sqlite3.Connection) -> int:
            if not statements.session_exists(conn, session_id, ANY_OWNER):
                raise KeyError(session_id)
            return statements.insert_turn(conn, session_id, run_id, user_text, now)

        return await self._write(insert)

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
        """`TurnOpener.open_turn` in one hop: one job of the writer thread, in one
        transaction (the session check or creation, the memory window, the document and the
        new turn), so it also sees every checkpoint queued before it."""
        common.check_window(window)
        if create and not session_id:
            raise ValueError("session_id must not be empty")
        now = time.time()
        new_id = common.new_session_id() if session_id is None else session_id if create else None
        new_owner = None if isinstance(owner, AnyOwner) else owner

        def open_(conn: sqlite3.Connection) -> OpenedTurn:
            if new_id is not None:
                try:
                    conn.execute(
                        "INSERT INTO sessions (id, owner, title, created_at, updated_at)"
                        " VALUES (?, ?, '', ?, ?)",
                        (new_id, new_owner, now, now),
                    )
                except sqlite3.IntegrityError:
                    raise ValueError(f"session {new_id!r} already exists") from None
            sid, old = new_id or cast(str, session_id), new_id is None
            if old and not statements.session_exists(conn, sid, owner):
                raise KeyError(sid)
            # a session created here has no turns and no document yet: nothing to read
            history = statements.select_history(conn, sid, window, answered=True) if window and old else []
            doc = statements.select_document(conn, sid) if document and old else None
            turn_id = statements.insert_turn(conn, sid, run_id, user_text, now)
            return OpenedTurn(session_id=sid, history=history, document=doc, turn_id=turn_id)

        return await self._write(open_)

    async def update_partial(self, turn_id: int, answer: str) -> None:
        """Checkpoint a running turn's partial answer (no-op once the turn is finished):
        coalesced with the other streams' and written within `CHECKPOINT_BATCH_S`, never
        awaited (sqlite/checkpoints.py)."""
        self._checkpoints.put(turn_id, answer)

    async def _finish(self, turn_id: int, final: common.FinalTurn) -> None:
        def update(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE turns SET answer = ?, status = ?, error = ?, finished_at = ?, finish_reason = ?,"
                " steps = ? WHERE id = ? AND status = 'running'",
                (
                    final.answer,
                    final.status,
                    final.error,
                    final.finished_at,
                    final.finish_reason,
                    rows.dump_steps(final.steps),
                    turn_id,
                ),
            )

        # the answer must not be lost to a full disk: retried until it lands (memory/deferred.py)
        await self._deferred.write(("finish", turn_id), lambda: self._write(update))

    async def history(
        self, session_id: str, *, limit: int | None = None, answered: bool = False
    ) -> list[Turn]:
        """The last `limit` turns (all when None), oldest first; `answered`: only those with
        an answer (the memory window; see `SessionStore.history`)."""
        common.check_limit(limit)

        def select(conn: sqlite3.Connection) -> list[Turn]:
            return statements.select_history(conn, session_id, limit, answered=answered)

        # checkpoints touch only `running` turns, which `answered` leaves out
        return await self._read(select, turns=not answered)

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
                (common.RECOVERED_ERROR, now),
            )
            return cur.rowcount

        self._checkpoints.queue()  # the partial answers it keeps: those waiting land first
        return await self._write(update)

    # -- documents

    async def _put_document(self, session_id: str, document: Document) -> None:
        def upsert(conn: sqlite3.Connection) -> None:
            if conn.execute("SELECT 1 FROM sessions WHERE id = ?", (session_id,)).fetchone() is None:
                raise KeyError(session_id)
            conn.execute(
                f"INSERT INTO documents (session_id, {rows.DOCUMENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (session_id) DO UPDATE SET"
                " name = excluded.name, text = excluded.text, created_at = excluded.created_at,"
                " total_chars = excluded.total_chars, total_tokens = excluded.total_tokens,"
                " budget_tokens = excluded.budget_tokens",
                (
                    session_id,
                    document.name,
                    document.text,
                    document.created_at,
                    document.total_chars,
                    document.total_tokens,
                    document.budget_tokens,
                ),
            )

        await self._write(upsert)

    async def get_document(self, session_id: str) -> Document | None:
        return await self._read(lambda conn: statements.select_document(conn, session_id))

    # -- maintenance

    async def integrity_check(self) -> str:
        """`PRAGMA integrity_check`: "ok" for a sound file, else the problems, one a line."""

        def check(conn: sqlite3.Connection) -> str:
            return "\n".join(str(row[0]) for row in conn.execute("PRAGMA integrity_check"))

        return await self._read(check)

    async def close(self) -> None:
        """Close the connection, after a last try of deferred writes and every queued write;
        calling it again does nothing."""
        if self._conn is not None:
            self._checkpoints.queue()
            await self._deferred.close()
        await asyncio.to_thread(self._writer.close)

        def close_sync() -> None:
            with self._lock:
                conn, self._conn = self._conn, None
                if conn is not None:
                    conn.close()

        await asyncio.to_thread(close_sync)
        self._reader.shutdown(wait=False)
