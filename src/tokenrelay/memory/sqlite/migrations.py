"""The SQLite schema: an ordered, append-only list of migrations recorded in `_migrations`.

Opening a store applies each missing migration, all in one transaction; re-opening is a
no-op. A migration's name, once released, never changes meaning.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable

__all__ = ["MIGRATIONS", "apply_migrations"]


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
