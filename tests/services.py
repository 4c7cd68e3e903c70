"""The PostgreSQL and Redis servers the scale-out tests use, and the rule for their absence:
skipped with the reason on a machine without them, a failure in CI (where .ci/run starts them)."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

import pytest

__all__ = ["PG_ADMIN", "REDIS", "fresh_database", "services_or_skip"]

PG_ADMIN = os.environ.get("TOKENRELAY_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("TOKENRELAY_TEST_REDIS", "redis://127.0.0.1:6379/0")


def services_or_skip() -> None:
    problems = []
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:
        problems.append(f"PostgreSQL at {PG_ADMIN}: {exc}")
    try:
        import redis

        redis.Redis.from_url(REDIS, socket_connect_timeout=3).ping()
    except Exception as exc:
        problems.append(f"Redis at {REDIS}: {exc}")
    if problems:
        if os.environ.get("CI"):
            pytest.fail("services missing in CI: " + "; ".join(problems))
        pytest.skip("services missing: " + "; ".join(problems))


@contextlib.contextmanager
def fresh_database(prefix: str) -> Iterator[str]:
    """A throwaway PostgreSQL database (its URL), dropped afterwards; skips without services."""
    services_or_skip()
    import psycopg

    name = f"tokenrelay_{prefix}_" + uuid.uuid4().hex[:10]
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
