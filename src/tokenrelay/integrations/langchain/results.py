"""What a LangChain run's objects mean to tokenrelay: tool calls in a message, a tool's result,
the answer in a run's result (when none streamed), token usage of a model call.

Pure functions of LangChain objects; the callback handler (`handler.py`) and the routing of
model text (`routing.py`) use them.
"""

from __future__ import annotations

import tokenrelay.integrations.langchain.common  # noqa: F401  (first: says which extra to install)

# isort: split

import json
from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, ToolMessage
from langchain_core.outputs import LLMResult

from tokenrelay.events import Usage
from tokenrelay.integrations.langchain.common import content_parts, message_parts

__all__ = ["answer_of", "has_tool_calls", "tool_result", "usage_of"]


def has_tool_calls(message: Any) -> bool:
    if getattr(message, "tool_calls", None) or getattr(message, "invalid_tool_calls", None):
        return True
    extra = getattr(message, "additional_kwargs", None)
    return bool(extra and (extra.get("tool_calls") or extra.get("function_call")))


def tool_result(output: Any) -> tuple[str | None, str | None]:
    """(result, error) of a tool's output (a ToolMessage, a Command, or any value)."""
    if isinstance(output, ToolMessage):
        text = content_parts(output.content)[0] if not isinstance(output.content, str) else output.content
        return (None, text) if output.status == "error" else (text, None)
    if isinstance(output, str):
        return output, None
    messages = getattr(output, "update", None)  # a LangGraph Command from a tool
    if isinstance(messages, Mapping):
        for item in messages.get("messages") or ():
            if isinstance(item, ToolMessage):
                return tool_result(item)
    try:
        return json.dumps(output, ensure_ascii=False, default=str), None
    except (TypeError, ValueError):
        return str(output), None


def answer_of(result: Any) -> str:
    """The answer text in a run's result, for runs whose answer did not stream: a string, an
    AI message without tool calls, an AgentExecutor's `output`, the last message of a graph
    state, or a structured response (as JSON)."""
    if result is None:
        return ""
    if isinstance(result, str):
        return result
    if isinstance(result, BaseMessage):
        if isinstance(result, AIMessage) and not has_tool_calls(result):
            return message_parts(result)[0]
        return ""
    if isinstance(result, Mapping):
        output = result.get("output")
        if isinstance(output, str):
            return output
        structured = result.get("structured_response")
        if structured is not None:
            dump = getattr(structured, "model_dump", None)
            value = dump() if callable(dump) else structured
            try:
                return json.dumps(value, ensure_ascii=False, default=str)
            except (TypeError, ValueError):
                return str(value)
        messages = result.get("messages")
        if isinstance(messages, Sequence) and messages and isinstance(messages[-1], AIMessage):
            return answer_of(messages[-1])
        for key in ("answer", "text", "result"):
            if isinstance(result.get(key), str):
                return str(result[key])
    return ""


def usage_of(message: Any, response: LLMResult | None) -> Usage:
    """Token usage of a finished model call: the message's `usage_metadata`, else the
    response's `llm_output["token_usage"]` (older integrations); zero when neither says."""
    if message is not None:
        usage = getattr(message, "usage_metadata", None)
        if usage:
            return Usage(
                prompt_tokens=usage.get("input_tokens", 0) or 0,
                completion_tokens=usage.get("output_tokens", 0) or 0,
            )
    elif response is not None and response.llm_output:
        counts = response.llm_output.get("token_usage") or {}
        if isinstance(counts, Mapping):
            return Usage(
                prompt_tokens=counts.get("prompt_tokens", 0) or 0,
                completion_tokens=counts.get("completion_tokens", 0) or 0,
            )
    return Usage()
