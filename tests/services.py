"""The PostgreSQL and Redis servers the scale-out tests use, and the rule for their absence:
skipped with the reason on a machine without them, a failure in CI (where .ci/run starts them)."""

from __future__ import annotations

import os

import pytest

__all__ = ["PG_ADMIN", "REDIS", "services_or_skip"]

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
