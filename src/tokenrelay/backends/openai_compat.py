"""The former home of the OpenAI backend, kept so existing imports work; it is
`tokenrelay.backends.openai` now."""

from __future__ import annotations

from tokenrelay.backends.openai import DEFAULT_BASE_URL, OpenAIBackend

__all__ = ["DEFAULT_BASE_URL", "OpenAIBackend"]
