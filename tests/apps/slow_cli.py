"""The real `tokenrelay` command (`tokenrelay.cli.main`) with one more model string for
terminal tests: `slow:{"delay": SECONDS, "replies": [...]}` is the scripted backend, each of
whose replies starts only after SECONDS (the model thinking: a slow first token)."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass

from tokenrelay.backends import GenerationSettings, ModelChunk, register_backend
from tokenrelay.cli import main
from tokenrelay.config import Settings
from tokenrelay.messages import Message, ToolSpec
from tokenrelay.testing import ScriptedBackend


@dataclass
class SlowStart(ScriptedBackend):
    delay: float = 0.0

    async def stream(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[ToolSpec] | None = None,
        settings: GenerationSettings = GenerationSettings(),
    ) -> AsyncGenerator[ModelChunk, None]:
        await asyncio.sleep(self.delay)
        async for chunk in super().stream(messages, tools=tools, settings=settings):
            yield chunk


def _slow(arg: str, settings: Settings) -> SlowStart:
    spec = json.loads(arg)
    return SlowStart(replies=spec["replies"], delay=spec["delay"])


if __name__ == "__main__":
    register_backend("slow", _slow)
    sys.exit(main())
