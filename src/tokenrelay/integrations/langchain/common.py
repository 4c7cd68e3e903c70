"""Shared helpers of the LangChain bridge: the import guard, message text, one-line errors.

Importing this module (and so any `tokenrelay.integrations.langchain*` module) without LangChain
installed raises an `ImportError` that says which extra to install.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

try:
    import langchain_core  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "tokenrelay's LangChain bridge needs LangChain: pip install 'tokenrelay[langchain]'"
    ) from exc

__all__ = ["content_parts", "describe_error", "message_parts"]


def content_parts(content: Any) -> tuple[str, str]:
    """(text, reasoning) of a LangChain message `content`: a string, or a list of content
    blocks (strings, `text` blocks, Anthropic `thinking` blocks, standard `reasoning` blocks,
    OpenAI Responses `reasoning` blocks with a `summary`). Other blocks are ignored."""
    if type(content) is str:
        return content, ""
    if isinstance(content, str):
        return str(content), ""
    text: list[str] = []
    reasoning: list[str] = []
    for block in content or ():
        if isinstance(block, str):
            text.append(block)
            continue
        if not isinstance(block, Mapping):
            continue
        kind = block.get("type")
        if kind == "text" or (kind is None and "text" in block):
            value = block.get("text")
            if isinstance(value, str):
                text.append(value)
        elif kind == "thinking":
            value = block.get("thinking")
            if isinstance(value, str):
                reasoning.append(value)
        elif kind == "reasoning":
            value = block.get("reasoning")
            if isinstance(value, str):
                reasoning.append(value)
            for part in block.get("summary") or ():
                if isinstance(part, Mapping) and isinstance(part.get("text"), str):
                    reasoning.append(part["text"])
    return "".join(text), "".join(reasoning)


def message_parts(message: Any) -> tuple[str, str]:
    """(text, reasoning) of a message or message chunk, including `reasoning_content` that
    some integrations put in `additional_kwargs` (DeepSeek, vLLM, Ollama, ...)."""
    text, reasoning = content_parts(message.content)
    extra = getattr(message, "additional_kwargs", None)
    if extra:
        more = extra.get("reasoning_content")
        if isinstance(more, str) and more:
            reasoning += more
    return text, reasoning


def describe_error(exc: BaseException, limit: int = 300) -> str:
    """One line naming the exception: `Type: first line of its message`, at most `limit` chars."""
    lines = str(exc).strip().splitlines()
    first = lines[0].strip() if lines else ""
    text = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"
