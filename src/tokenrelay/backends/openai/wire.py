"""The Chat Completions wire format: the request body, and the chunks of each response event.

Pure functions over decoded JSON; the HTTP side is in `backend.py`, the error messages in
`failures.py`. Invariants: `parse_event` does one `json.loads` and no per-character work
(it is on the per-token path); a payload that is not the documented shape raises the
backend's "malformed stream chunk" error, never a `KeyError` or `TypeError`; tool-call ids
and names that a server repeats on every fragment are passed on once.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from tokenrelay.backends.base import (
    FinishChunk,
    GenerationSettings,
    ModelChunk,
    TextChunk,
    ThinkingChunk,
    ToolCallChunk,
)
from tokenrelay.events import Usage
from tokenrelay.messages import Message, ToolSpec

if TYPE_CHECKING:
    from tokenrelay.backends.openai.failures import Failures

__all__ = ["StreamState", "parse_completion", "parse_event", "payload"]

#: Finish reasons some servers use, mapped onto the OpenAI vocabulary.
FINISH_ALIASES: Final[dict[str, str]] = {
    "eos": "stop",
    "eos_token": "stop",
    "stop_sequence": "stop",
    "end_turn": "stop",
    "max_tokens": "length",
    "function_call": "tool_calls",
    "tool_use": "tool_calls",
}

_NO_CHUNKS: Final[tuple[ModelChunk, ...]] = ()


class StreamState:
    """What one `stream` call has learned from the server so far."""

    __slots__ = ("done", "finish_reason", "produced", "tool_ids", "tool_names", "tools_seen", "usage")

    def __init__(self) -> None:
        self.done = False  # saw `data: [DONE]`
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self.produced = False  # yielded at least one chunk (the first token has arrived)
        self.tool_ids: dict[int, str] = {}
        self.tool_names: dict[int, str] = {}
        self.tools_seen = False

    def finish(self) -> FinishChunk:
        reason = self.finish_reason or "stop"
        reason = FINISH_ALIASES.get(reason, reason)
        if reason == "stop" and self.tools_seen:
            reason = "tool_calls"  # some servers say "stop" after streaming tool calls
        return FinishChunk(reason, self.usage)


def payload(
    model: str,
    messages: Sequence[Message],
    tools: Sequence[ToolSpec] | None,
    settings: GenerationSettings,
    extra_body: dict[str, Any],
) -> dict[str, Any]:
    """The request body; `extra_body` is merged last, a `None` value removing a key."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [m.to_openai() for m in messages],
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": settings.temperature,
        "top_p": settings.top_p,
    }
    if settings.max_tokens is not None:
        body["max_tokens"] = settings.max_tokens
    if settings.stop:
        body["stop"] = list(settings.stop)
    if settings.seed is not None:
        body["seed"] = settings.seed
    if tools:
        body["tools"] = [spec.to_openai() for spec in tools]
    if settings.json_schema is not None:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "action", "schema": settings.json_schema, "strict": False},
        }
    for key, value in extra_body.items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    return body


def parse_event(data: str, state: StreamState, fail: Failures) -> Sequence[ModelChunk]:
    """The chunks of one SSE `data` payload; updates `state` (finish reason, usage, [DONE])."""
    if data == "[DONE]":
        state.done = True
        return _NO_CHUNKS
    obj = _load_object(data, fail)
    out: list[ModelChunk] = []
    try:
        choices = obj.get("choices")
        if choices:
            choice = choices[0]
            delta = choice.get("delta")
            if delta:
                reasoning = delta.get("reasoning_content") or delta.get("reasoning")
                if reasoning and type(reasoning) is str:
                    out.append(ThinkingChunk(reasoning))
                content = delta.get("content")
                if content:
                    if type(content) is not str:
                        raise fail.malformed(data)
                    out.append(TextChunk(content))
                tool_calls = delta.get("tool_calls")
                if tool_calls:
                    _add_tool_chunks(tool_calls, state, out)
            reason = choice.get("finish_reason")
            if reason:
                state.finish_reason = str(reason)
        if obj.get("usage"):  # only the last chunk has it: no call on the per-token path
            _read_usage(obj, state)
    except (AttributeError, TypeError, ValueError, KeyError, IndexError):
        raise fail.malformed(data) from None
    return out


def _add_tool_chunks(calls: Sequence[dict[str, Any]], state: StreamState, out: list[ModelChunk]) -> None:
    for position, call in enumerate(calls):
        chunk = _tool_chunk(call, position, state)
        if chunk is not None:
            out.append(chunk)


def _tool_chunk(call: dict[str, Any], position: int, state: StreamState) -> ToolCallChunk | None:
    index = call.get("index")
    index = position if index is None else int(index)
    function = call.get("function") or {}
    call_id = call.get("id") or None
    name = function.get("name") or None
    arguments = function.get("arguments") or ""
    if type(arguments) is not str:  # a few servers send the arguments as an object
        arguments = json.dumps(arguments, ensure_ascii=False)
    # Some servers repeat id and name on every fragment: pass each on once.
    if call_id is not None:
        if state.tool_ids.get(index) == call_id:
            call_id = None
        else:
            state.tool_ids[index] = call_id
    if name is not None:
        if state.tool_names.get(index) == name:
            name = None
        else:
            state.tool_names[index] = name
    if call_id is None and name is None and not arguments:
        return None
    state.tools_seen = True
    return ToolCallChunk(index=index, id=call_id, name=name, arguments=arguments)


def parse_completion(body: bytes, state: StreamState, fail: Failures) -> list[ModelChunk]:
    """The chunks of a non-streamed completion (servers that ignore `stream: true`)."""
    text = body.decode("utf-8", "replace")
    obj = _load_object(text, fail)
    out: list[ModelChunk] = []
    try:
        choice = obj["choices"][0]
        message = choice.get("message") or {}
        reasoning = message.get("reasoning_content") or message.get("reasoning")
        if reasoning and type(reasoning) is str:
            out.append(ThinkingChunk(reasoning))
        if message.get("content"):
            out.append(TextChunk(str(message["content"])))
        _add_tool_chunks(message.get("tool_calls") or (), state, out)
        state.finish_reason = str(choice.get("finish_reason") or "stop")
        _read_usage(obj, state)
    except (AttributeError, TypeError, ValueError, KeyError, IndexError):
        raise fail.malformed(text) from None
    return out


def _load_object(text: str, fail: Failures) -> dict[str, Any]:
    """`text` as a JSON object; an `error` member in it is the server's failure."""
    try:
        obj = json.loads(text)
    except ValueError:
        raise fail.malformed(text) from None
    if type(obj) is not dict:
        raise fail.malformed(text)
    error = obj.get("error")
    if error:
        raise fail.stream_error(error)
    return obj


def _read_usage(obj: dict[str, Any], state: StreamState) -> None:
    """The token counts, when `obj` has them (the last chunk, with `include_usage`)."""
    usage = obj.get("usage")
    if usage:
        state.usage = Usage(
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
        )
