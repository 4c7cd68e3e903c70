"""The no-agent mode as an agent: one plain model call per run (`PlainChat`).

No tools, no session memory: the run is the system prompt (if any), the caller's history and
the question, streamed by `tokenrelay.run.stream_chat`. The CLI's `--plain` uses it through
`api.Runner`, so plain and agent runs reach every sink through the same `stream(request)`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from tokenrelay.agent.protocol import AgentBase, RunRequest
from tokenrelay.backends.base import Backend, GenerationSettings
from tokenrelay.events import Event
from tokenrelay.messages import Message
from tokenrelay.run import stream_chat

__all__ = ["PlainChat"]


class PlainChat(AgentBase):
    """A plain chat over `backend` (see the module docstring). Holds configuration only."""

    accepts = frozenset({"generation", "system"})

    def __init__(
        self,
        backend: Backend,
        *,
        system_prompt: str | None = None,
        generation: GenerationSettings = GenerationSettings(),
    ) -> None:
        self.backend = backend
        self.system_prompt = system_prompt
        self.generation = generation

    @property
    def name(self) -> str:
        return self.backend.name

    def stream(self, request: RunRequest) -> AsyncIterator[Event]:
        system = "\n\n".join(part for part in (self.system_prompt, request.system) if part)
        messages = [Message.system(system)] if system else []
        for user_text, answer in request.history:
            messages += [Message.user(user_text), Message.assistant(answer)]
        messages.append(Message.user(request.text))
        settings = self.generation if request.generation is None else request.generation
        return stream_chat(self.backend, messages, settings=settings, run_id=request.run_id)
