"""Database rows to the store's records, shared by the SQLite and PostgreSQL stores.

Both stores select the same columns in the same order (`SESSION_COLUMNS`, `TURN_COLUMNS`,
`DOCUMENT_COLUMNS`), so one mapping serves both. A turn's steps are stored as compact JSON
text; text that is not a JSON list of objects reads as no steps (never an exception).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import cast

from tokenrelay.memory.base import Document, SessionInfo, Step, Turn, TurnStatus

__all__ = [
    "DOCUMENT_COLUMNS",
    "SESSION_COLUMNS",
    "TURN_COLUMNS",
    "document_from_row",
    "dump_steps",
    "load_steps",
    "session_from_row",
    "turn_from_row",
]

SESSION_COLUMNS = "id, owner, title, created_at, updated_at"
TURN_COLUMNS = (
    "id, session_id, run_id, user_text, answer, status, error, created_at, finished_at, finish_reason, steps"
)
DOCUMENT_COLUMNS = "name, text, created_at, total_chars, total_tokens, budget_tokens"

Row = Sequence[object]


def session_from_row(row: Row) -> SessionInfo:
    id_, owner, title, created_at, updated_at = row
    return SessionInfo(
        id=cast(str, id_),
        owner=cast("str | None", owner),
        title=cast(str, title),
        created_at=cast(float, created_at),
        updated_at=cast(float, updated_at),
    )


def turn_from_row(row: Row) -> Turn:
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
        steps=load_steps(cast("str | None", steps)),
    )


def document_from_row(row: Row) -> Document:
    name, text, created_at, total_chars, total_tokens, budget_tokens = row
    return Document(
        name=cast(str, name),
        text=cast(str, text),
        created_at=cast(float, created_at),
        total_chars=cast("int | None", total_chars),
        total_tokens=cast("int | None", total_tokens),
        budget_tokens=cast("int | None", budget_tokens),
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
