"""The real `tokenrelay` command (`tokenrelay.cli.main`) with one more model string for
terminal tests: `slow:{"delay": SECONDS, "replies": [...], "native": BOOL}` is the scripted
backend, each of whose replies starts only after SECONDS (the model thinking: a slow first
token). A reply is a string, or a list of text pieces, native tool calls
(`{"tool": NAME, "arguments": JSON_TEXT}`) and a finish (`{"finish": "length"}`)."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass

from tokenrelay.backends import FinishChunk, GenerationSettings, ModelChunk, ToolCallChunk, register_backend
from tokenrelay.cli import main
from tokenrelay.config import Settings
from tokenrelay.messages import Message, ToolSpec
from tokenrelay.testing import Reply, ScriptedBackend


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


def _piece(piece: str | dict[str, str], index: int) -> str | ModelChunk:
    if isinstance(piece, str):
        return piece
    if "finish" in piece:
        return FinishChunk(piece["finish"])
    return ToolCallChunk(index, f"call_{index}", piece["tool"], piece["arguments"])


def _reply(reply: str | list[str | dict[str, str]]) -> Reply:
    return reply if isinstance(reply, str) else [_piece(p, i) for i, p in enumerate(reply)]


def _slow(arg: str, settings: Settings) -> SlowStart:
    spec = json.loads(arg)
    replies = [_reply(r) for r in spec["replies"]]
    return SlowStart(replies=replies, delay=spec["delay"], native_tools=spec.get("native", False))


if __name__ == "__main__":
    register_backend("slow", _slow)
    sys.exit(main())
