"""What an in-process model offers beyond chat streaming: the seam of the embedded agent.

A hosted model is only reachable through `Backend.stream`; a model running in this process
can also be asked cheap, exact questions about its own probabilities. The embedded agent
(`tokenrelay.agent.embedded`) uses this protocol, and only it, to decide actions on small
models: it never imports llama.cpp. `LlamaCppBackend` implements it.

Prompts passed to `choose` and `complete` are a `SplitPrompt`: a `prefix` that many calls
share (instructions, few-shot examples) and the `rest`. Implementations may keep the model's
state after the prefix, so a call costs only the evaluation of `rest`; the result must be the
same as evaluating `prefix + rest` from scratch.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from tokenrelay.backends.base import GenerationSettings, ModelChunk
from tokenrelay.events import Usage
from tokenrelay.messages import Message

__all__ = ["Choice", "Completion", "LocalModel", "SplitPrompt"]


@dataclass(frozen=True, slots=True)
class SplitPrompt:
    """Raw prompt text (chat template already applied): a shared `prefix` and the `rest`."""

    prefix: str
    rest: str


@dataclass(frozen=True, slots=True)
class Choice:
    """The model's log-probabilities of each option as the continuation of a prompt.

    Options are compared by their first distinguishing token (greedy decoding restricted to
    the options would choose the same), so `logprobs[i]` is the log-probability of option i's
    tokens up to and including the first one no other option shares."""

    logprobs: tuple[float, ...]
    usage: Usage

    @property
    def best(self) -> int:
        return max(range(len(self.logprobs)), key=self.logprobs.__getitem__)


@dataclass(frozen=True, slots=True)
class Completion:
    text: str
    usage: Usage


@runtime_checkable
class LocalModel(Protocol):
    """An in-process model the embedded agent can score and constrain."""

    #: the model understands English only (the tiny demo default): other languages get a notice
    english_only: bool

    async def render(self, messages: Sequence[Message]) -> str:
        """`messages` in the model's chat template, ending where the assistant's reply starts
        (loads the model first if needed)."""
        ...

    async def choose(self, prompt: SplitPrompt, options: Sequence[str]) -> Choice:
        """Score `options` as continuations of `prompt` (one forward pass when their first
        tokens differ)."""
        ...

    async def complete(
        self,
        prompt: SplitPrompt,
        *,
        grammar: str | None = None,
        json_schema: dict[str, Any] | None = None,
        max_tokens: int = 64,
    ) -> Completion:
        """Greedy continuation of `prompt`, constrained by a GBNF `grammar` or a JSON schema
        when given; stops at the end-of-turn token or after `max_tokens`."""
        ...

    def stream_text(
        self, prompt: str, *, settings: GenerationSettings = GenerationSettings()
    ) -> AsyncGenerator[ModelChunk, None]:
        """Like `Backend.stream`, for a prompt already in the chat template (e.g. `render(...)`
        plus the start of the reply)."""
        ...
