"""Which factory builds the backend a model-string prefix names.

Every backend, built-in or third-party, is a plug-in: a `BackendFactory` named by an entry
point in the group `tokenrelay.backends` (`prefix = "module:callable"`), or registered at run
time with `register_backend`. The project's own prefixes are declared in its pyproject.toml;
`BUILTIN` repeats them as entry-point strings so that a checkout whose installed metadata
predates a prefix (no `pip install -e .` since) still finds it.

Invariants:

* nothing here imports a higher layer: `scripted:` (tokenrelay.testing) and `langchain:`
  (tokenrelay.integrations) are found by name, and imported only when chosen;
* precedence: run-time registrations, then installed entry points, then `BUILTIN`;
* a plug-in is imported at most once per process, and only when its prefix is used.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from functools import cache
from importlib.metadata import entry_points

from tokenrelay.backends.base import Backend
from tokenrelay.config import Settings
from tokenrelay.errors import ConfigError

__all__ = ["BUILTIN", "ENTRY_POINT_GROUP", "BackendFactory", "find_factory", "known_prefixes"]

#: Builds a backend from the part of the model string after the colon ("" if none).
BackendFactory = Callable[[str, Settings], Backend]

ENTRY_POINT_GROUP = "tokenrelay.backends"

#: The project's own entry points (as in pyproject.toml), for when the installed metadata lacks them.
BUILTIN: Mapping[str, str] = {
    "hf": "tokenrelay.backends.factories:hf",
    "langchain": "tokenrelay.integrations.langchain_plugin:langchain_backend",
    "llamacpp": "tokenrelay.backends.factories:llamacpp",
    "openai": "tokenrelay.backends.factories:openai",
    "scripted": "tokenrelay.testing:scripted_backend",
}


@cache
def _installed() -> dict[str, str]:
    """The `tokenrelay.backends` entry points of the installed distributions: prefix → target."""
    return {ep.name.strip().lower(): ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


@cache
def _load(target: str) -> BackendFactory:
    """The object an entry-point string (`module:attribute`) names."""
    module_name, _, attribute = target.partition(":")
    try:
        obj = importlib.import_module(module_name.strip())
        for part in attribute.strip().split(".") if attribute.strip() else ():
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot load the backend plug-in {target!r}: {exc}") from None
    if not callable(obj):
        raise ConfigError(f"the backend plug-in {target!r} is not callable")
    factory: BackendFactory = obj
    return factory


def find_factory(prefix: str, registered: Mapping[str, BackendFactory]) -> BackendFactory | None:
    """The factory for `prefix` (lower case), or None when no plug-in declares it."""
    factory = registered.get(prefix)
    if factory is not None:
        return factory
    target = _installed().get(prefix) or BUILTIN.get(prefix)
    return None if target is None else _load(target)


def known_prefixes(registered: Mapping[str, BackendFactory]) -> list[str]:
    """Every prefix a model string may use, sorted."""
    return sorted({*registered, *_installed(), *BUILTIN})
