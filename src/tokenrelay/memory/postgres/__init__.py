"""`SessionStore` on PostgreSQL (needs the `postgres` extra): the store (store.py), its pooled
connections (pool.py) and its schema (migrations.py). The names below are the package's
public face."""

from __future__ import annotations

from tokenrelay.memory.postgres.migrations import MIGRATIONS, TABLES, apply_migrations
from tokenrelay.memory.postgres.store import PostgresSessionStore

__all__ = ["MIGRATIONS", "TABLES", "PostgresSessionStore", "apply_migrations"]
