"""The model backend seam: one ABC with one async-generator method.

A backend turns chat messages (plus optional tool specs and generation settings) into a
stream of `ModelChunk`s. Invariants every backend keeps:

* the stream ends with exactly one `FinishChunk` (unless it raises);
* failures raise `BackendError` with a message that says what failed (never a bare
  exception from a transport library, never an API key);
* when the consumer stops iterating (`aclose()`, or the task is cancelled) generation stops
  promptly: no thread or HTTP request keeps running on the run's behalf.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any

from tokenrelay.events import Usage
from tokenrelay.messages import Message, ToolSpec

__all__ = [
    "Backend",
    "FinishChunk",
    "GenerationSettings",
    "ModelChunk",
    "TextChunk",
    "ThinkingChunk",
    "ToolCallChunk",
]


@dataclass(frozen=True, slots=True)
class TextChunk:
    """Generated text. Always whole characters: backends never split a UTF-8 sequence."""

    text: str


@dataclass(frozen=True, slots=True)
class ThinkingChunk:
    """Reasoning text a model emits apart from its content (e.g. `reasoning_content`)."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolCallChunk:
    """A fragment of a native tool call. Fragments with the same `index` concatenate:
    `id` and `name` arrive once (usually first), `arguments` is JSON text in pieces."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True, slots=True)
class FinishChunk:
    reason: str = "stop"  # stop | length | tool_calls | cancelled
    usage: Usage | None = None


ModelChunk = TextChunk | ThinkingChunk | ToolCallChunk | FinishChunk


@dataclass(frozen=True, kw_only=True, slots=True)
class GenerationSettings:
    """Sampling and output constraints for one model call.

    `json_schema` asks for output that matches the schema (grammar-constrained decoding on
    llama.cpp, `response_format` on OpenAI-compatible servers); `grammar` is a raw GBNF
    grammar for llama.cpp and is ignored elsewhere.
    """

    max_tokens: int | None = 2048
    temperature: float = 0.7
    top_p: float = 0.95
    stop: tuple[str, ...] = ()
    seed: int | None = None
    json_schema: dict[str, Any] | None = None
    grammar: str | None = None


class Backend(ABC):
    """A model behind one method. Subclasses set `name` (the model string that selects them)."""

    name: str = ""
    #: whether `stream` honours `tools` with native tool calls
    supports_native_tools: bool = False
    #: whether `json_schema` is enforced by constrained decoding (not just requested)
    enforces_json_schema: bool = False
    #: the context window in tokens, when known
    context_window: int | None = None

    @abstractmethod
    def stream(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[ToolSpec] | None = None,
        settings: GenerationSettings = GenerationSettings(),
    ) -> AsyncGenerator[ModelChunk, None]:
        """Generate a reply to `messages`, chunk by chunk."""

    def count_tokens(self, text: str) -> int:
        """An estimate of how many tokens `text` takes for this model."""
        return max(1, len(text.encode("utf-8")) // 4)

    async def aclose(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Release what the backend holds (models, connection pools)."""
