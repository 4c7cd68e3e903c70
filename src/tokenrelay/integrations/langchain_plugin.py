"""The `langchain:` backend plug-in (entry point `tokenrelay.backends: langchain`).

Imports LangChain only when a `langchain:` model string is used; without the extra, the
error says which one to install."""

from __future__ import annotations

from tokenrelay.backends.base import Backend
from tokenrelay.config import Settings
from tokenrelay.errors import ConfigError

__all__ = ["langchain_backend"]


def langchain_backend(arg: str, settings: Settings) -> Backend:
    """`langchain:<provider>:<model>`: a LangChain chat model (see `backend_from_model_id`)."""
    try:
        from tokenrelay.integrations.langchain.backend import backend_from_model_id
    except ImportError:
        raise ConfigError("langchain: models need: pip install 'tokenrelay[langchain]'") from None
    return backend_from_model_id(arg)
