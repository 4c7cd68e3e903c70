"""The PostgreSQL schema: an ordered, append-only list of migrations recorded in
`tokenrelay_migrations`.

When a store opens, the missing ones are applied in one transaction under
`pg_advisory_xact_lock` (keyed by the current schema): workers starting at once wait for each
other and each migration runs once. DDL is transactional, so a failing migration leaves
nothing behind. A migration's name, once released, never changes meaning.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, cast

from psycopg import AsyncConnection
from psycopg.rows import TupleRow

__all__ = ["MIGRATIONS", "TABLES", "apply_migrations", "schema_problems"]

Connection = AsyncConnection[TupleRow]

#: First key of the migration lock (`pg_advisory_xact_lock(int4, int4)`: a key space apart
#: from the one-bigint form); the second key is a hash of the current schema.
MIGRATION_LOCK_CLASS = 0x746B7231  # "tkr1"
TABLES = ("tokenrelay_sessions", "tokenrelay_turns", "tokenrelay_documents")

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


async def schema_problems(conn: Connection) -> str:
    """`ok` when every migration (and table) is in place; else the problems, one a line."""
    cur = await conn.execute(
        "SELECT to_regclass(name) IS NOT NULL FROM unnest(%s::text[]) AS name",
        (["tokenrelay_migrations", *TABLES],),
    )
    present = [bool(row[0]) for row in await cur.fetchall()]
    if not present[0]:
        return "the tokenrelay_migrations table is missing"
    cur = await conn.execute("SELECT name FROM tokenrelay_migrations")
    done = {row[0] for row in await cur.fetchall()}
    problems = [f"table {table} is missing" for table, ok in zip(TABLES, present[1:], strict=True) if not ok]
    missing = [name for name, _ in MIGRATIONS if name not in done]
    if missing:
        problems.insert(0, "migrations not applied: " + ", ".join(missing))
    return "\n".join(problems) or "ok"
