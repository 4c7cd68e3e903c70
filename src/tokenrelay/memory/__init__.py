"""Conversation memory: the `SessionStore` Protocol, its implementations, and `open_store`.

`open_store(url)` picks the implementation from a database URL:

* `sqlite:///<path>`: a SQLite file. As in SQLAlchemy, everything after `sqlite:///` is the
  path, so `sqlite:///data/t.db` is relative to the working directory and
  `sqlite:////var/lib/t.db` (what `config.default_db_url()` produces) is absolute.
  `~` is expanded. The parent directory is created.
* `sqlite://`, `sqlite://:memory:`, `sqlite:///:memory:`: a private in-memory SQLite database.
* a plain path (no `scheme://`): a SQLite file at that path.
* `memory://`: `InMemorySessionStore` (dicts; nothing is written anywhere).
* `postgresql://...` (or `postgres://...`): `tokenrelay.memory.postgres.PostgresSessionStore`,
  imported only then, since it needs the `postgres` extra.

Anything else raises `ConfigError`. Opening a SQLite store applies pending schema migrations.
"""

from __future__ import annotations

import importlib
import sqlite3
from typing import cast

from tokenrelay._redact import redact_url
from tokenrelay.errors import ConfigError
from tokenrelay.memory.base import Document, SessionInfo, SessionStore, Turn, TurnStatus
from tokenrelay.memory.inmemory import InMemorySessionStore
from tokenrelay.memory.sqlite import SQLiteSessionStore

__all__ = [
    "Document",
    "InMemorySessionStore",
    "SQLiteSessionStore",
    "SessionInfo",
    "SessionStore",
    "Turn",
    "TurnStatus",
    "open_store",
    "sqlite_path_from_url",
]

_POSTGRES_MISSING = "PostgreSQL storage needs the postgres extra: pip install 'tokenrelay[postgres]'"


def sqlite_path_from_url(url: str) -> str | None:
    """The SQLite path a URL names (`":memory:"` for an in-memory database), or None when the
    URL is not a SQLite URL or a plain path."""
    if url.startswith("sqlite://"):
        rest = url[len("sqlite://") :]
        if rest in ("", ":memory:", "/:memory:"):
            return ":memory:"
        if not rest.startswith("/") or rest == "/":
            return None  # sqlite://host/... or sqlite:///: no path
        return rest[1:]
    if "://" in url or not url.strip():
        return None
    return url


def open_store(url: str) -> SessionStore:
    """Open the session store a database URL names (see the module docstring)."""
    if url in ("memory://", "memory:"):
        return InMemorySessionStore()
    if url.startswith(("postgresql://", "postgres://")):
        try:
            module = importlib.import_module("tokenrelay.memory.postgres")
            store_class = module.PostgresSessionStore
        except ImportError as exc:
            raise ConfigError(_POSTGRES_MISSING) from exc
        return cast(SessionStore, store_class(url))
    path = sqlite_path_from_url(url)
    if path is None:
        shown = redact_url(url)
        raise ConfigError(f"unsupported database URL {shown!r}: use sqlite:///path or postgresql://...")
    try:
        return SQLiteSessionStore(path)
    except (OSError, sqlite3.Error) as exc:
        raise ConfigError(f"cannot open the session database {path}: {exc}") from exc
