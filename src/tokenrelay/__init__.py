"""tokenrelay: stream an LLM agent's answer, token by token, to a terminal, over HTTP and
into a browser.

Start with `Agent` (tools + memory + exact final-answer streaming) or `stream_chat` (a plain
model call), both async iterators of the events in `tokenrelay.events`; `load_backend`
picks a model by string (`llamacpp`, `llamacpp:/path.gguf`, `openai:gpt-4o-mini`).
"""

from __future__ import annotations

from tokenrelay.agent.loop import Agent
from tokenrelay.backends import Backend, GenerationSettings, load_backend, register_backend
from tokenrelay.callbacks import CallbackHandler, StreamingStdOutCallbackHandler, run_callbacks
from tokenrelay.config import Settings
from tokenrelay.errors import BackendError, ConfigError, TokenrelayError
from tokenrelay.events import (
    AnswerDelta,
    Event,
    Narration,
    ReasoningDelta,
    RunError,
    RunFinished,
    RunStarted,
    ToolCallFinished,
    ToolCallStarted,
)
from tokenrelay.messages import Message, ToolCall, ToolSpec
from tokenrelay.run import stream_chat
from tokenrelay.tools import Tool, calculator, tool

__all__ = [
    "Agent",
    "AnswerDelta",
    "Backend",
    "BackendError",
    "CallbackHandler",
    "ConfigError",
    "Event",
    "GenerationSettings",
    "Message",
    "Narration",
    "ReasoningDelta",
    "RunError",
    "RunFinished",
    "RunStarted",
    "Settings",
    "StreamingStdOutCallbackHandler",
    "TokenrelayError",
    "Tool",
    "ToolCall",
    "ToolCallFinished",
    "ToolCallStarted",
    "ToolSpec",
    "calculator",
    "load_backend",
    "register_backend",
    "run_callbacks",
    "stream_chat",
    "tool",
]
