"""`SessionStore` on one SQLite file: the store (store.py), its one writer thread (worker.py)
and its schema (migrations.py). The names below are the package's public face."""

from __future__ import annotations

from tokenrelay.memory.common import FINAL_STATUSES, RECOVERED_ERROR, new_session_id, title_from_text
from tokenrelay.memory.sqlite.migrations import MIGRATIONS, apply_migrations
from tokenrelay.memory.sqlite.store import SQLiteSessionStore

__all__ = [
    "FINAL_STATUSES",
    "MIGRATIONS",
    "RECOVERED_ERROR",
    "SQLiteSessionStore",
    "apply_migrations",
    "new_session_id",
    "title_from_text",
]
