"""The messages of a run's first model call: system prompt, history, memory, the question.

Two shapes: the agent's own (`agent_messages`: with the JSON-action instructions and tool list
on the `json` protocol) and the plain one (`plain_messages`: the conversation without agent
instructions, for a plain final-answer call and the embedded policy). Both put the caller's
`given` (user, assistant) pairs before the session's remembered ones, then the question.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from tokenrelay.agent.prompts import DEFAULT_SYSTEM, json_system_prompt
from tokenrelay.messages import Message
from tokenrelay.tools.registry import Tool

__all__ = ["agent_messages", "plain_messages"]

Pairs = Sequence[tuple[str, str]]


def _conversation(system: str, given: Pairs, remembered: Pairs, text: str) -> list[Message]:
    messages = [Message.system(system)]
    for pairs in (given, remembered):
        for user_text, answer in pairs:
            messages += [Message.user(user_text), Message.assistant(answer)]
    messages.append(Message.user(text))
    return messages


def _plain_system(system_prompt: str | None, document: str | None) -> str:
    system = system_prompt or DEFAULT_SYSTEM
    if document:
        system += "\n\nDOCUMENT - the user attached this document; answer from it:\n" + document
    return system


def plain_messages(
    text: str, given: Pairs, remembered: Pairs, document: str | None, system_prompt: str | None
) -> list[Message]:
    """The conversation without agent instructions (the document in the system prompt)."""
    return _conversation(_plain_system(system_prompt, document), given, remembered, text)


def agent_messages(
    protocol: Literal["native", "json"],
    tools: Sequence[Tool],
    text: str,
    given: Pairs,
    remembered: Pairs,
    document: str | None,
    system_prompt: str | None,
) -> list[Message]:
    """The agent's first call: on `json`, the action instructions and tools in the system prompt."""
    if protocol == "json":
        system = json_system_prompt(system_prompt, tools, document)
    else:
        system = _plain_system(system_prompt, document)
    return _conversation(system, given, remembered, text)
