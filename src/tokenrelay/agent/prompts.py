"""Prompts for the JSON action protocol (the tutorial's conversational ReAct agent).

The wording follows LangChain's CHAT_CONVERSATIONAL_REACT_DESCRIPTION agent, shortened so a
135M-parameter model keeps it in view. `action_schema` is what constrained decoding enforces:
`action` comes first, so answer text can stream as soon as the action is known.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from tokenrelay.tools.registry import Tool

FINAL_ANSWER = "Final Answer"

DEFAULT_SYSTEM = (
    "You are a helpful assistant. Answer in the language of the user's question. "
    "Use Markdown where it helps; put diagrams in ```mermaid code blocks."
)

FORCED_STOP_MESSAGE = "Agent stopped due to iteration limit or time limit."


def json_system_prompt(system: str | None, tools: Sequence[Tool], document: str | None = None) -> str:
    lines = [system or DEFAULT_SYSTEM, ""]
    if tools:
        lines.append("TOOLS - you can ask the user to run one of these tools for you:")
        for t in tools:
            hint = "a string" if t.single_input else "a JSON object " + json.dumps(t.parameters)
            lines.append(f"> {t.name}: {t.description} (action_input: {hint})")
        lines.append("Use a tool only when the question needs it; otherwise answer directly.")
        lines.append("")
    lines += [
        "RESPONSE FORMAT: always reply with one JSON object and nothing else.",
        '- To use a tool: {"action": "<tool name>", "action_input": <tool input>}',
        "- To answer the user directly: "
        f'{{"action": "{FINAL_ANSWER}", "action_input": "<your full answer>"}}',
    ]
    if document:
        lines += ["", "DOCUMENT - the user attached this document; answer from it:", document]
    return "\n".join(lines)


def tool_response_message(observation: str) -> str:
    return (
        f"TOOL RESPONSE:\n---------------------\n{observation}\n\n"
        "Okay, so what is the response to my last comment? If you use information from the tool, "
        "say it directly, without naming the tool. Reply with one JSON object and nothing else."
    )


def invalid_output_message(error: str) -> str:
    return (
        f"Your last reply could not be used: {error}. Reply again with exactly one JSON object: "
        f'{{"action": "<tool name or {FINAL_ANSWER}>", "action_input": "..."}}'
    )


FINAL_CALL_MESSAGE = (
    "You have used all your tool calls. Using what you know so far, give your final answer now, as "
    f'{{"action": "{FINAL_ANSWER}", "action_input": "<your full answer>"}}'
)


def action_schema(tools: Sequence[Tool], *, final_only: bool = False) -> dict[str, Any]:
    actions = [FINAL_ANSWER] if final_only else [t.name for t in tools] + [FINAL_ANSWER]
    structured = any(t.single_input is None for t in tools) and not final_only
    action_input: dict[str, Any] = {} if structured else {"type": "string"}
    return {
        "type": "object",
        "properties": {"action": {"type": "string", "enum": actions}, "action_input": action_input},
        "required": ["action", "action_input"],
    }
