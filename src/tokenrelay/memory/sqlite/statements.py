"""The SQL statements several methods of the SQLite store share (sqlite/store.py): inserting a
turn, reading the memory window, reading the document. Each runs on a connection the caller
holds (the writer thread's transaction, or a read under the store's lock)."""

from __future__ import annotations

import sqlite3
from typing import cast

from tokenrelay.memory import common, rows
from tokenrelay.memory.base import AnyOwner, Document, Turn

__all__ = ["insert_turn", "select_document", "select_history", "session_exists"]

#: the turns that have an answer: what the memory window holds (matches `turns_answered`)
_ANSWERED = " AND status != 'running' AND answer != ''"


def session_exists(conn: sqlite3.Connection, session_id: str, owner: str | None | AnyOwner) -> bool:
    """Whether the session exists and is `owner`'s (any owner's for `AnyOwner`)."""
    if isinstance(owner, AnyOwner):
        row = conn.execute("SELECT 1 FROM sessions WHERE id = ?", (session_id,)).fetchone()
    else:
        row = conn.execute(
            "SELECT 1 FROM sessions WHERE id = ? AND owner IS ?", (session_id, owner)
        ).fetchone()
    return row is not None


def insert_turn(conn: sqlite3.Connection, session_id: str, run_id: str, user_text: str, now: float) -> int:
    """Insert a `running` turn of an existing session, bump the session's `updated_at` and
    title an untitled session after the message; the turn id."""
    cur = conn.execute(
        "INSERT INTO turns (session_id, run_id, user_text, answer, status, created_at)"
        " VALUES (?, ?, ?, '', 'running', ?)",
        (session_id, run_id, user_text, now),
    )
    conn.execute(
        "UPDATE sessions SET updated_at = ?, title = CASE WHEN title = '' THEN ? ELSE title END WHERE id = ?",
        (now, common.title_from_text(user_text), session_id),
    )
    return cast(int, cur.lastrowid)


def select_history(
    conn: sqlite3.Connection, session_id: str, limit: int | None, *, answered: bool
) -> list[Turn]:
    """The last `limit` turns (all when None), oldest first; `answered`: only those with an answer."""
    where = "session_id = ?" + (_ANSWERED if answered else "")
    found = conn.execute(
        f"SELECT {rows.TURN_COLUMNS} FROM (SELECT {rows.TURN_COLUMNS} FROM turns WHERE {where}"
        " ORDER BY id DESC LIMIT ?) ORDER BY id ASC",
        (session_id, -1 if limit is None else limit),
    ).fetchall()
    return [rows.turn_from_row(row) for row in found]


def select_document(conn: sqlite3.Connection, session_id: str) -> Document | None:
    row = conn.execute(
        f"SELECT {rows.DOCUMENT_COLUMNS} FROM documents WHERE session_id = ?", (session_id,)
    ).fetchone()
    return None if row is None else rows.document_from_row(row)
