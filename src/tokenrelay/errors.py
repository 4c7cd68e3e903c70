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

    def __init__(self, message: str, *, status: int | None = None, retryable: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable


class StorageError(TokenrelayError):
    """The session store could not be read or written: disk full, database unreachable."""

    code = "storage"
