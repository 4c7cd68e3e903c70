"""The OpenAI-compatible backend: `backend.py` (HTTP and streaming), `wire.py` (request body
and response chunks), `failures.py` (one-line error messages without secrets)."""

from __future__ import annotations

from tokenrelay.backends.openai.backend import DEFAULT_BASE_URL, OpenAIBackend

__all__ = ["DEFAULT_BASE_URL", "OpenAIBackend"]
