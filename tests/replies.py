"""What a scripted model writes, for tests of the agent's JSON protocol over every surface.

`final(text)` is the JSON action a non-native backend writes for a final answer; `echo` is a
`ScriptedBackend` reply function that answers with the user's own (last) words, which shows
whose prompt a reply belongs to.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from tokenrelay.messages import Message

__all__ = ["PREFIX", "action", "echo", "final", "last_user", "paced_reply"]

#: the head of a final-answer action, up to where the answer text starts
PREFIX = '{"action": "Final Answer", "action_input": "'


def action(name: str, action_input: Any) -> str:
    """The agent's JSON action `name` with `action_input`, non-ASCII kept as is."""
    return json.dumps({"action": name, "action_input": action_input}, ensure_ascii=False)


def final(text: str) -> str:
    """The JSON action for a final answer `text`."""
    return action("Final Answer", text)


def last_user(messages: Sequence[Message]) -> str:
    """The content of the last user message of a prompt."""
    return next(m.content for m in reversed(messages) if m.role == "user")


def echo(messages: Sequence[Message]) -> str:
    """A reply answering with the user's own words: "You said: <last user message>"."""
    return final("You said: " + last_user(messages))


def paced_reply(words: Sequence[str]) -> list[str]:
    """One chunk for the JSON head, one per word, one for the tail: answer chunks are exact."""
    return [PREFIX, *words, '"}']
