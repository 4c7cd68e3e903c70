"""The factories of the built-in backends, named by the `tokenrelay.backends` entry points
(`llamacpp`, `hf`, `openai`) exactly as a third-party plug-in names its own.

Each is a `BackendFactory`: `(arg, settings) -> Backend`, `arg` being the part of the model
string after the colon. Heavy modules (llama.cpp, httpx) are imported inside the factory, so
choosing `openai` never loads llama.cpp and vice versa.
"""

from __future__ import annotations

from tokenrelay.backends.base import Backend
from tokenrelay.config import Settings

__all__ = ["hf", "llamacpp", "openai"]


def llamacpp(arg: str, settings: Settings) -> Backend:
    from tokenrelay.backends.llamacpp import LlamaCppBackend

    return LlamaCppBackend(
        model_path=arg or None,
        n_ctx=settings.llama_n_ctx,
        n_threads=settings.llama_n_threads,
        n_threads_batch=settings.llama_n_threads_batch,
        max_ctx=settings.llama_max_ctx,
    )


def hf(arg: str, settings: Settings) -> Backend:
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


def openai(arg: str, settings: Settings) -> Backend:
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
