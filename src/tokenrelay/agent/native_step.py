"""One model call of the agent with native (OpenAI-style) tool calls on offer (`native_step`).

With the `stream` policy, text streams as answer text until a tool-call fragment arrives; then
it is re-labelled as narration and the rest of the message's text is reasoning. With `hold`, a
message's text is held until the message ends without a tool call. Yields `DONE` once the
final answer has been produced (see `agent/json_step.py` for the step contract).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import TYPE_CHECKING

from tokenrelay.agent.protocol import StreamMode
from tokenrelay.agent.state import DONE, RunState
from tokenrelay.agent.tool_call import call_tool
from tokenrelay.backends.base import FinishChunk, TextChunk, ThinkingChunk, ToolCallChunk
from tokenrelay.events import Event, ReasoningDelta, new_reasoning_delta
from tokenrelay.messages import Message, ToolCall

if TYPE_CHECKING:
    from tokenrelay.agent.loop import Agent

__all__ = ["native_step"]


async def native_step(
    agent: Agent, messages: list[Message], mode: StreamMode, state: RunState, *, final_only: bool
) -> AsyncGenerator[Event | object, None]:
    """One model call with native tool calls on offer (see the module docstring)."""
    offer = bool(agent.tools) and not final_only
    stream_text = not offer or state.policy == "stream"
    said = ""  # text of this message streamed as answer text (known once a tool call begins)
    held: list[str] = []  # text of this message not streamed
    calls: dict[int, dict[str, str]] = {}
    full = mode == "full"
    reason: str | None = None
    async with aclosing(
        agent.backend.stream(
            messages, tools=[t.spec() for t in agent.tools] if offer else None, settings=state.generation
        )
    ) as chunks:
        async for chunk in chunks:
            if type(chunk) is TextChunk:
                if not chunk.text:
                    continue
                if stream_text and not calls:
                    yield state.answer_delta(chunk.text)
                else:
                    held.append(chunk.text)
            elif isinstance(chunk, ToolCallChunk):
                if not calls and state.parts:  # the message turns into a tool call: narration
                    said = state.answer  # (answer text since the last narration is this message's)
                    for event in state.narrate():
                        yield event
                parts = calls.setdefault(chunk.index, {"id": "", "name": "", "arguments": ""})
                parts["id"] = chunk.id or parts["id"]
                parts["name"] = chunk.name or parts["name"]
                parts["arguments"] += chunk.arguments
            elif isinstance(chunk, FinishChunk):
                reason = state.call_ended(chunk)
            elif isinstance(chunk, ThinkingChunk) and full:
                yield new_reasoning_delta(chunk.text)
    if not calls:
        if held:
            yield state.answer_delta("".join(held))
        state.finished(reason)
        yield DONE
        return
    if held and full:
        yield ReasoningDelta(text="".join(held))
    if final_only:
        return
    tool_calls = tuple(
        ToolCall(id=c["id"] or "call_" + uuid.uuid4().hex[:12], name=c["name"], arguments=c["arguments"])
        for _, c in sorted(calls.items())
    )
    messages.append(Message.assistant(said + "".join(held), tool_calls))
    for call in tool_calls:
        async for event in call_tool(agent, call.id, call.name, call.arguments, state):
            yield event
        messages.append(Message(role="tool", content=state.steps[-1][2], tool_call_id=call.id))
