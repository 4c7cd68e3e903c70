"""Model backends, chosen by one model string.

`llamacpp` (the embedded default), `llamacpp:/path/to/model.gguf`, `hf:OWNER/REPO/FILE.gguf`
or `hf:<alias>` (a GGUF file from the Hugging Face Hub, downloaded once, run on llama.cpp;
aliases in `tokenrelay.models`), `openai:<model>` (any
OpenAI-compatible server; base URL and key from settings or OPENAI_BASE_URL/OPENAI_API_KEY),
and `scripted:<text>` (the test double, never a default). Third parties add prefixes with
`register_backend` at run time, or with an entry point in the group `tokenrelay.backends`, as the
built-ins do (see `tokenrelay.backends.registry`). Backend modules are imported lazily, so
choosing `openai` never loads llama.cpp and vice versa.
"""

from __future__ import annotations

from tokenrelay.backends.base import (
    Backend,
    FinishChunk,
    GenerationSettings,
    ModelChunk,
    TextChunk,
    ThinkingChunk,
    ToolCallChunk,
)
from tokenrelay.backends.registry import BackendFactory, find_factory, known_prefixes
from tokenrelay.config import Settings
from tokenrelay.errors import ConfigError

__all__ = [
    "Backend",
    "BackendFactory",
    "FinishChunk",
    "GenerationSettings",
    "ModelChunk",
    "TextChunk",
    "ThinkingChunk",
    "ToolCallChunk",
    "load_backend",
    "parse_model_string",
    "register_backend",
]

#: Run-time registrations (`register_backend`), which take precedence over the entry points.
_REGISTRY: dict[str, BackendFactory] = {}


def register_backend(prefix: str, factory: BackendFactory) -> None:
    """Make `prefix:<arg>` model strings build backends with `factory`."""
    _REGISTRY[prefix.strip().lower()] = factory


def parse_model_string(model: str) -> tuple[str, str]:
    prefix, _, arg = model.strip().partition(":")
    return prefix.strip().lower(), arg.strip()


def load_backend(model: str | None = None, settings: Settings | None = None) -> Backend:
    """The backend a model string names (default: `settings.model`, i.e. TOKENRELAY_MODEL)."""
    settings = settings or Settings.from_env()
    prefix, arg = parse_model_string(model or settings.model)
    factory = find_factory(prefix, _REGISTRY)
    if factory is None:
        known = ", ".join(known_prefixes(_REGISTRY))
        raise ConfigError(
            f"unknown model backend {prefix!r} (known: {known}); e.g. 'llamacpp' or 'openai:gpt-4o-mini'"
        )
    return factory(arg, settings)
