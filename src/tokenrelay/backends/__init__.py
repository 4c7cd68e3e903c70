"""Model backends, chosen by one model string.

`llamacpp` (the embedded default), `llamacpp:/path/to/model.gguf`, `hf:OWNER/REPO/FILE.gguf`
or `hf:<alias>` (a GGUF file from the Hugging Face Hub, downloaded once, run on llama.cpp;
aliases in `tokenrelay.models`), `openai:<model>` (any
OpenAI-compatible server; base URL and key from settings or OPENAI_BASE_URL/OPENAI_API_KEY),
and `scripted:<text>` (the test double, never a default). Third parties add prefixes with
`register_backend`. Backend modules are imported lazily, so choosing `openai` never loads
llama.cpp and vice versa.
"""

from __future__ import annotations

from collections.abc import Callable

from tokenrelay.backends.base import (
    Backend,
    FinishChunk,
    GenerationSettings,
    ModelChunk,
    TextChunk,
    ThinkingChunk,
    ToolCallChunk,
)
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

#: Builds a backend from the part of the model string after the colon ("" if none).
BackendFactory = Callable[[str, Settings], Backend]


def _llamacpp(arg: str, settings: Settings) -> Backend:
    from tokenrelay.backends.llamacpp import LlamaCppBackend

    return LlamaCppBackend(
        model_path=arg or None,
        n_ctx=settings.llama_n_ctx,
        n_threads=settings.llama_n_threads,
        n_threads_batch=settings.llama_n_threads_batch,
        max_ctx=settings.llama_max_ctx,
    )


def _hf(arg: str, settings: Settings) -> Backend:
    """`hf:OWNER/REPO/FILE.gguf[@REVISION]` or `hf:<alias>`: downloaded (once) when the
    backend is built, so a server starts only with its model on disk."""
    from tokenrelay.backends.hf import ensure_local, parse_hf
    from tokenrelay.backends.llamacpp import LlamaCppBackend

    ref = parse_hf(arg)
    return LlamaCppBackend(
        model_path=ensure_local(ref),
        n_ctx=settings.llama_n_ctx,
        n_threads=settings.llama_n_threads,
        n_threads_batch=settings.llama_n_threads_batch,
        max_ctx=settings.llama_max_ctx,
        name=ref.model,
    )


def _openai(arg: str, settings: Settings) -> Backend:
    """`openai:<model>`; a comma-separated base URL list means several upstream servers
    (round robin with failover before the first token)."""
    from tokenrelay.backends.openai import OpenAIBackend
    from tokenrelay.backends.retry import NO_RETRY, RetryPolicy

    retry = RetryPolicy(attempts=settings.upstream_retries + 1, max_total_s=settings.upstream_retry_max_s)
    urls: list[str | None] = [u.strip() for u in (settings.openai_base_url or "").split(",") if u.strip()]
    backends: list[Backend] = [
        OpenAIBackend(
            model=arg or "gpt-4o-mini",
            base_url=url,
            api_key=settings.openai_api_key,
            timeout_s=settings.request_timeout_s,
            retry=retry if len(urls) <= 1 else NO_RETRY,  # several: the failover retries rounds
        )
        for url in urls or [None]
    ]
    if len(backends) == 1:
        return backends[0]
    from tokenrelay.backends.failover import FailoverBackend

    return FailoverBackend(backends, retry=retry)


def _scripted(arg: str, settings: Settings) -> Backend:
    from tokenrelay.testing import ScriptedBackend

    return ScriptedBackend(replies=[arg or "Hello!"])


def _langchain(arg: str, settings: Settings) -> Backend:
    try:
        from tokenrelay.integrations.langchain_backend import backend_from_model_id
    except ImportError:
        raise ConfigError("langchain: models need: pip install 'tokenrelay[langchain]'") from None
    return backend_from_model_id(arg)


_REGISTRY: dict[str, BackendFactory] = {
    "hf": _hf,
    "llamacpp": _llamacpp,
    "langchain": _langchain,
    "openai": _openai,
    "scripted": _scripted,
}


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
    factory = _REGISTRY.get(prefix)
    if factory is None:
        known = ", ".join(sorted(_REGISTRY))
        raise ConfigError(
            f"unknown model backend {prefix!r} (known: {known}); e.g. 'llamacpp' or 'openai:gpt-4o-mini'"
        )
    return factory(arg, settings)
