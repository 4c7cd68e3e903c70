"""The SQL several methods of the PostgreSQL store share (postgres/store.py): storable text
(PostgreSQL `text` cannot hold NUL: it becomes U+FFFD), the owner condition, inserting a turn,
reading the memory window and the document. Each runs on a connection the caller holds."""

from __future__ import annotations

from typing import Any, cast

from tokenrelay.memory import common, rows
from tokenrelay.memory.base import AnyOwner, Document, Turn
from tokenrelay.memory.postgres.migrations import Connection

__all__ = [
    "SERVER_NOW",
    "insert_turn",
    "opt_text",
    "owner_filter",
    "select_document",
    "select_history",
    "text",
]

#: The database server's clock as epoch seconds (the heartbeat's clock).
SERVER_NOW = "extract(epoch FROM clock_timestamp())::double precision"


def text(value: str) -> str:
    """`value` storable in a PostgreSQL `text` (which cannot hold NUL)."""
    return value.replace("\x00", "\ufffd")


def opt_text(value: str | None) -> str | None:
    return None if value is None else text(value)


def owner_filter(owner: str | None) -> tuple[str, tuple[str, ...]]:
    """The SQL condition (and its parameters) selecting the sessions of `owner`."""
    return ("owner IS NULL", ()) if owner is None else ("owner = %s", (text(owner),))


async def insert_turn(
    conn: Connection, session_id: str, owner: str | None | AnyOwner, run_id: str, user_text: str, now: float
) -> int | None:
    """Insert a `running` turn, bump the session's `updated_at` and title an untitled session
    after the message; the turn id, or None when the session does not exist (or is not
    `owner`'s; `AnyOwner`: not checked). One statement: the UPDATE locks the session row (a
    concurrent delete waits) and the INSERT happens only when it found the session."""
    condition, params = ("TRUE", ()) if isinstance(owner, AnyOwner) else owner_filter(owner)
    values: dict[str, Any] = {
        "now": now,
        "title": common.title_from_text(text(user_text)),
        "sid": session_id,
        "run_id": text(run_id),
        "text": text(user_text),
    }
    values.update({f"o{i}": p for i, p in enumerate(params)})
    condition = condition.replace("%s", "%(o0)s")
    cur = await conn.execute(
        "WITH s AS ("
        " UPDATE tokenrelay_sessions SET updated_at = %(now)s,"
        " title = CASE WHEN title = '' THEN %(title)s ELSE title END"
        f" WHERE id = %(sid)s AND {condition} RETURNING id)"
        " INSERT INTO tokenrelay_turns"
        " (session_id, run_id, user_text, answer, status, created_at, heartbeat_at)"
        f" SELECT s.id, %(run_id)s, %(text)s, '', 'running', %(now)s, {SERVER_NOW} FROM s"
        " RETURNING id",
        values,
    )
    row = await cur.fetchone()
    return None if row is None else cast(int, row[0])


async def select_history(
    conn: Connection, session_id: str, limit: int | None, *, answered: bool
) -> list[Turn]:
    """The last `limit` turns (all when None), oldest first; `answered`: only those with an answer."""
    where = "session_id = %s" + (" AND status <> 'running' AND answer <> ''" if answered else "")
    cur = await conn.execute(
        f"SELECT {rows.TURN_COLUMNS} FROM (SELECT {rows.TURN_COLUMNS} FROM tokenrelay_turns"
        f" WHERE {where} ORDER BY id DESC LIMIT %s) AS last ORDER BY id ASC",
        (session_id, limit),
    )
    return [rows.turn_from_row(row) for row in await cur.fetchall()]


async def select_document(conn: Connection, session_id: str) -> Document | None:
    cur = await conn.execute(
        f"SELECT {rows.DOCUMENT_COLUMNS} FROM tokenrelay_documents WHERE session_id = %s", (session_id,)
    )
    row = await cur.fetchone()
    return None if row is None else rows.document_from_row(row)
