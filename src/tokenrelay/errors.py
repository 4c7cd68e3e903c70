"""Exceptions with messages meant for people: the CLI prints `str(exc)` as one line, the
server turns them into error events or 4xx bodies. Never put secrets (API keys) in them."""

from __future__ import annotations

__all__ = ["BackendError", "ConfigError", "StorageError", "TokenrelayError"]


class TokenrelayError(Exception):
    """Base of every error tokenrelay raises on purpose."""

    code = "internal"


class ConfigError(TokenrelayError):
    """Bad configuration: unknown backend, missing model file, invalid option."""

    code = "bad_request"


class BackendError(TokenrelayError):
    """The model backend failed: unreachable server, rejected key, broken stream, timeout."""

    code = "backend"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retryable: bool = False,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        #: whether trying the same call again may succeed (429, 5xx, connection failures)
        self.retryable = retryable
        #: how long the server asked to wait before trying again (Retry-After), if it did
        self.retry_after_s = retry_after_s


class StorageError(TokenrelayError):
    """The session store could not be read or written: disk full, database unreachable."""

    code = "storage"
