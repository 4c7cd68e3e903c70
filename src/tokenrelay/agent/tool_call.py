"""One tool call of the agent (`call_tool`): `ToolCallStarted`, the tool run under its timeout,
`ToolCallFinished`; the step recorded for the final answer and for the stored turn.

A tool's failure (unknown name, exception, timeout) is its result, told to the model as the
observation; it never ends the run.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any

from tokenrelay.agent.prompts import FINAL_ANSWER
from tokenrelay.agent.state import RunState
from tokenrelay.events import Event, ToolCallFinished, ToolCallStarted
from tokenrelay.tools.registry import ToolOutcome

if TYPE_CHECKING:
    from tokenrelay.agent.loop import Agent

__all__ = ["call_tool"]

log = logging.getLogger("tokenrelay.agent")


async def call_tool(
    agent: Agent, call_id: str, name: str, arguments: Any, state: RunState
) -> AsyncGenerator[Event, None]:
    """Run tool `name`: `ToolCallStarted`, then `ToolCallFinished` (its failure is its result)."""
    yield ToolCallStarted(call_id=call_id, name=name, arguments=arguments)
    tool = agent._by_name.get(name)
    if tool is None:
        known = ", ".join(t.name for t in agent.tools) or "none"
        outcome = ToolOutcome(error=f"there is no tool named {name!r} (tools: {known}, or {FINAL_ANSWER})")
    else:
        outcome = await tool.invoke(arguments, timeout_s=agent.tool_timeout_s)
    log.log(
        logging.INFO if agent.verbose else logging.DEBUG,
        "tool %s(%r) -> %s",
        name,
        arguments,
        outcome.observation,
    )
    state.steps.append((name, arguments, outcome.observation))
    state.record.append(
        {
            "type": "tool",
            "call_id": call_id,
            "name": name,
            "arguments": arguments,
            "result": outcome.result,
            "error": outcome.error,
        }
    )
    yield ToolCallFinished(call_id=call_id, name=name, result=outcome.result, error=outcome.error)
