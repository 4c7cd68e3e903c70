"""The pooled connections of a PostgreSQL store (psycopg 3 + `psycopg_pool`), and the rules
that keep a password out of every message.

Invariants:

* `PgPool(url)` does no I/O. The pool (`AsyncConnectionPool`, `min_size`..`max_size`
  connections, autocommit) opens on first use, in the running event loop, after the
  migrations are applied on a connection of its own; it belongs to that loop. Failing to
  connect raises `ConfigError("cannot connect to PostgreSQL at host:port/db: <reason>")`.
* `connection()` lends a connection; losing the server raises `StorageError`. The pool
  replaces broken connections; during an outage, waits are cut short and the server is
  probed (at most once a second) so the store recovers as soon as it is back.
* The password (as given, URL-encoded, or from `PGPASSWORD`) never appears in an exception,
  a log line or `repr()`: messages go through `reason()`, URLs through `redact_url`.
* After `close()` every use raises `RuntimeError("the session store is closed")`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from tokenrelay._redact import redact_url
from tokenrelay.errors import ConfigError, StorageError
from tokenrelay.memory.postgres.migrations import Connection, apply_migrations

__all__ = ["Connection", "PgPool"]

log = logging.getLogger("tokenrelay.memory")

#: Seconds to wait for a connection when none is given in the URL (`connect_timeout`).
CONNECT_TIMEOUT_S = 10
#: Seconds to wait for the pool's first connections.
POOL_OPEN_TIMEOUT_S = 30.0
#: Seconds any other operation waits for a connection (the server may be restarting).
CONNECTION_TIMEOUT_S = 10.0
#: For this long after a failure, operations wait at most `OUTAGE_WAIT_S` for a connection.
OUTAGE_S = 5.0
OUTAGE_WAIT_S = 1.0


class PgPool:
    """A lazily opened connection pool on one PostgreSQL database (see the module docstring)."""

    def __init__(self, url: str, *, min_size: int = 1, max_size: int = 10) -> None:
        if min_size < 0 or max_size < max(min_size, 1):
            raise ValueError(f"need 0 <= min_size <= max_size and max_size >= 1, not {min_size}, {max_size}")
        try:
            params = conninfo_to_dict(url)
        except psycopg.Error as exc:
            # libpq may quote the whole conninfo string (password included) in its message
            reason = _one_line(str(exc)).replace(url, redact_url(url))
            raise ConfigError(f"invalid PostgreSQL URL {redact_url(url)!r}: {reason}") from None
        self._url = url
        self._secrets = _secret_forms(url, params.get("password"))
        host = str(params.get("host") or os.environ.get("PGHOST") or "localhost")
        port = str(params.get("port") or os.environ.get("PGPORT") or "5432")
        dbname = str(params.get("dbname") or os.environ.get("PGDATABASE") or params.get("user") or "")
        #: "host:port/db", for messages.
        self.where = f"{host}:{port}/{dbname}"
        self._connect_kwargs: dict[str, Any] = {"autocommit": True}
        if "connect_timeout" not in params and "PGCONNECT_TIMEOUT" not in os.environ:
            self._connect_kwargs["connect_timeout"] = CONNECT_TIMEOUT_S
        if "application_name" not in params and "PGAPPNAME" not in os.environ:
            self._connect_kwargs["application_name"] = "tokenrelay"
        self.min_size = min_size
        self.max_size = max_size
        self._pool: AsyncConnectionPool[Connection] | None = None
        self._open_lock = asyncio.Lock()
        self._closed = False
        self._failed_at = float("-inf")
        self._probed_at = float("-inf")
        self._degraded = False  # a connection failed since the last one that worked

    @property
    def shown_url(self) -> str:
        """The URL as messages may show it (no password, no query string)."""
        return redact_url(self._url)

    # -- plumbing

    def reason(self, exc: BaseException) -> str:
        """The exception's message on one line, with no trace of the password."""
        text = _one_line(str(exc) or type(exc).__name__)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    async def _get_pool(self) -> AsyncConnectionPool[Connection]:
        if self._closed:
            raise RuntimeError("the session store is closed")
        if self._pool is None:
            async with self._open_lock:
                if self._pool is None:
                    pool = await self._open()
                    if self._closed:  # closed while we were opening
                        await pool.close()
                        raise RuntimeError("the session store is closed")
                    self._pool = pool
        return self._pool

    async def _open(self) -> AsyncConnectionPool[Connection]:
        """Connect once to apply the migrations (a clear error when that fails), then open
        the pool."""
        try:
            conn = await psycopg.AsyncConnection.connect(self._url, **self._connect_kwargs)
        except psycopg.Error as exc:
            raise ConfigError(f"cannot connect to PostgreSQL at {self.where}: {self.reason(exc)}") from None
        try:
            async with conn:
                await apply_migrations(conn)
        except psycopg.Error as exc:
            raise ConfigError(
                f"cannot set up the tokenrelay tables in PostgreSQL at {self.where}: {self.reason(exc)}"
            ) from None
        try:
            return await self._new_pool(POOL_OPEN_TIMEOUT_S)
        except PoolTimeout as exc:
            raise ConfigError(f"cannot connect to PostgreSQL at {self.where}: {self.reason(exc)}") from None

    async def _new_pool(self, open_timeout_s: float) -> AsyncConnectionPool[Connection]:
        pool: AsyncConnectionPool[Connection] = AsyncConnectionPool(
            self._url,
            kwargs=self._connect_kwargs,
            min_size=self.min_size,
            max_size=self.max_size,
            open=False,
            check=AsyncConnectionPool.check_connection,
            name="tokenrelay",
            timeout=CONNECTION_TIMEOUT_S,
        )
        try:
            await pool.open(wait=True, timeout=open_timeout_s)
        except BaseException:
            await pool.close()
            raise
        return pool

    async def _back(self, pool: AsyncConnectionPool[Connection]) -> AsyncConnectionPool[Connection]:
        """During an outage, at most once a second: if the server answers again, a fresh pool.
        (The pool's own reconnection backs off exponentially for as long as the outage
        lasted, so after a long one it would leave the store failing long after the server is
        back.)"""
        now = time.monotonic()
        if now - self._probed_at < 1.0:
            return pool
        self._probed_at = now
        try:
            probe = await psycopg.AsyncConnection.connect(
                self._url, **{**self._connect_kwargs, "connect_timeout": 1}
            )
            await probe.close()
            fresh = await self._new_pool(OUTAGE_WAIT_S * 5)
        except (psycopg.Error, PoolTimeout):
            return pool
        if self._pool is not pool or self._closed:  # someone else swapped it meanwhile
            await fresh.close()
            return self._pool or pool
        self._pool, self._degraded = fresh, False
        await pool.close(timeout=1.0)
        log.info("PostgreSQL at %s is back", self.where)
        return fresh

    @asynccontextmanager
    async def connection(self, wait_s: float | None = None) -> AsyncIterator[Connection]:
        """A pooled connection in autocommit mode (use `conn.transaction()` to write).
        Losing the server (a restart, the network) raises `StorageError`; the pool replaces
        broken connections, so the store works again as soon as the server is back. Within
        `OUTAGE_S` of a failure, waits for a connection are cut to `OUTAGE_WAIT_S`: while the
        server is away, requests fail fast instead of each waiting the whole timeout; and until
        a connection works again, the server is probed (`_back`) so recovery is immediate."""
        pool = await self._get_pool()
        if self._degraded:
            pool = await self._back(pool)
            if time.monotonic() - self._failed_at < OUTAGE_S:
                wait_s = OUTAGE_WAIT_S if wait_s is None else min(wait_s, OUTAGE_WAIT_S)
        try:
            async with pool.connection(timeout=wait_s) as conn:
                self._degraded = False
                yield conn
        except (psycopg.OperationalError, PoolTimeout) as exc:
            self._failed_at, self._degraded = time.monotonic(), True
            raise StorageError(f"cannot reach PostgreSQL at {self.where}: {self.reason(exc)}") from None

    # -- sessions

    @property
    def in_use(self) -> bool:
        """Whether the pool is open and not closed (there may be work to finish)."""
        return not self._closed and self._pool is not None

    async def close(self) -> None:
        """Close the pool; calling it again does nothing. Refuses work afterwards."""
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _secret_forms(url: str, password: object) -> tuple[str, ...]:
    """The strings that must never be shown: the password as given and as URL-encoded."""
    forms: set[str] = set()
    match = re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/@:]*:([^/@]*)@", url)
    if match and match.group(1):
        forms.add(match.group(1))
    for value in (password, os.environ.get("PGPASSWORD")):
        if isinstance(value, str) and value:
            forms.update({value, quote(value, safe="")})
    return tuple(sorted(forms, key=len, reverse=True))
