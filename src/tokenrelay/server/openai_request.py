"""An OpenAI Chat Completions request turned into one agent run's inputs, or a 400 that names
the field tokenrelay cannot honour.

Honoured: `messages` (system/developer messages become an addition to the agent's system
prompt; user/assistant messages become the input and the history), `max_completion_tokens`
(or `max_tokens`), `temperature`, `top_p`, `stop`, `seed`, `stream`, `stream_options`, and
`include_reasoning` (the vLLM/OpenRouter name: stream the agent's reasoning as
`delta.reasoning_content`). `model` and `user` are accepted and only informational: the server
has one model (its name comes back in the response), and `user` is not stored.

Everything else is refused unless it has its neutral value (`n: 1`, `tools: []`,
`response_format: {"type": "text"}`, `logprobs: false`, ...): a request is never answered as
if a field had been applied when it was not. Invariant: every top-level field and every
message field is either used, neutral, or the reason for a 400.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Final

from tokenrelay.backends.base import GenerationSettings
from tokenrelay.server.schemas import OpenAIChatRequest, OpenAIMessage

__all__ = ["OpenAIRunInputs", "Unsupported", "run_inputs"]

#: Top-level fields accepted when (and only when) they have one of these values (None always is).
_NEUTRAL: Final[dict[str, tuple[Any, ...]]] = {
    "n": (1,),
    "presence_penalty": (0, 0.0),
    "frequency_penalty": (0, 0.0),
    "logprobs": (False,),
    "top_logprobs": (0,),
    "logit_bias": ({},),
    "tools": ([],),
    "functions": ([],),
    "tool_choice": ("none",),
    "function_call": ("none",),
    "parallel_tool_calls": (True, False),  # meaningless without tools
    "response_format": ({"type": "text"},),
    "modalities": (["text"],),
    "store": (False,),
}

_WHY: Final[dict[str, str]] = {
    "n": "only one choice per request is supported (n: 1)",
    "tools": "client-side tools are not supported: tokenrelay's agent runs its own tools",
    "functions": "client-side functions are not supported: tokenrelay's agent runs its own tools",
    "tool_choice": "client-side tools are not supported: tokenrelay's agent runs its own tools",
    "function_call": "client-side functions are not supported: tokenrelay's agent runs its own tools",
    "response_format": "only plain text responses are supported (response_format type 'text')",
    "logprobs": "log probabilities are not supported",
    "top_logprobs": "log probabilities are not supported",
    "modalities": "only text output is supported",
    "store": "stored completions are not supported",
}

#: Message fields besides role and content, accepted when empty (clients echo them back).
_MESSAGE_EMPTY_OK: Final = frozenset(
    {"tool_calls", "function_call", "refusal", "audio", "annotations", "name"}
)

_MAX_STOP: Final = 16


class Unsupported(Exception):
    """A field (`param`, OpenAI's name for it) that cannot be honoured: answered with 400."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param
        self.message = f"{param}: {message}"


@dataclass(frozen=True, kw_only=True, slots=True)
class OpenAIRunInputs:
    text: str
    history: tuple[tuple[str, str], ...]
    #: what the client's system/developer messages say (added to the agent's system prompt)
    system: str | None
    #: the run's generation settings, or None to keep the agent's
    generation: GenerationSettings | None
    include_reasoning: bool


def run_inputs(body: OpenAIChatRequest, base: GenerationSettings) -> OpenAIRunInputs:
    """The run a request asks for; raises `Unsupported` (400) or `ValueError` (422, the
    request's shape is wrong rather than unsupported)."""
    _check_extra_fields(body)
    if body.n is not None and body.n != 1:
        raise Unsupported("n", f"{_WHY['n']}, got {body.n}")
    system, text, history = _conversation(body.messages)
    return OpenAIRunInputs(
        text=text,
        history=history,
        system=system,
        generation=_generation(body, base),
        include_reasoning=bool(body.include_reasoning),
    )


def _check_extra_fields(body: OpenAIChatRequest) -> None:
    for name, value in (body.model_extra or {}).items():
        if value is None:
            continue
        neutral = _NEUTRAL.get(name)
        if neutral is None:
            raise Unsupported(name, "this parameter is not supported by tokenrelay")
        if not any(value == ok and type(value) is type(ok) for ok in neutral):
            raise Unsupported(name, _WHY.get(name, f"only {neutral[0]!r} is supported"))


def _generation(body: OpenAIChatRequest, base: GenerationSettings) -> GenerationSettings | None:
    changes: dict[str, Any] = {}
    max_tokens = body.max_completion_tokens or body.max_tokens  # the newer name wins (as in vLLM)
    if max_tokens is not None:
        changes["max_tokens"] = max_tokens
    if body.temperature is not None:
        changes["temperature"] = body.temperature
    if body.top_p is not None:
        changes["top_p"] = body.top_p
    if body.seed is not None:
        changes["seed"] = body.seed
    if body.stop is not None:
        stops = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop)
        if len(stops) > _MAX_STOP:
            raise Unsupported("stop", f"at most {_MAX_STOP} stop sequences are supported, got {len(stops)}")
        if any(not s for s in stops):
            raise Unsupported("stop", "a stop sequence must not be empty")
        changes["stop"] = stops
    return replace(base, **changes) if changes else None


def _content(message: OpenAIMessage, where: str) -> str:
    content = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts: list[str] = []
    for j, part in enumerate(content):
        kind = part.get("type")
        if kind != "text":
            raise Unsupported(f"{where}.content[{j}].type", f"only text parts are supported, not {kind!r}")
        text = part.get("text")
        if not isinstance(text, str):
            raise ValueError(f"{where}.content[{j}].text must be a string")
        texts.append(text)
    return "".join(texts)


def _conversation(messages: list[OpenAIMessage]) -> tuple[str | None, str, tuple[tuple[str, str], ...]]:
    """(system addition, input text, history pairs). Consecutive messages of one role are
    joined with a blank line, so no message is dropped: history is (user, assistant) pairs,
    and an assistant message before any user message pairs with an empty user turn."""
    system: list[str] = []
    turns: list[tuple[str, list[str]]] = []  # (role, texts), roles alternating
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if message.role in ("tool", "function"):
            raise Unsupported(
                f"{where}.role",
                f"{message.role!r} messages are not supported: tokenrelay's agent runs its own tools",
            )
        for name, value in (message.model_extra or {}).items():
            if value in (None, "", [], {}) and name in _MESSAGE_EMPTY_OK:
                continue
            if name == "name":
                raise Unsupported(f"{where}.name", "participant names are not supported")
            raise Unsupported(f"{where}.{name}", "this message field is not supported")
        text = _content(message, where)
        if message.role in ("system", "developer"):
            if text:
                system.append(text)
            continue
        if turns and turns[-1][0] == message.role:
            turns[-1][1].append(text)
        else:
            turns.append((message.role, [text]))
    if not turns or all(role != "user" for role, _ in turns):
        raise ValueError("messages must contain a user message")
    if turns[-1][0] != "user":
        raise Unsupported(
            f"messages[{len(messages) - 1}].role",
            "the last message must be the user's: continuing an assistant message is not supported",
        )
    joined = [(role, "\n\n".join(texts)) for role, texts in turns]
    history: list[tuple[str, str]] = []
    pending: str | None = None
    for role, text in joined[:-1]:
        if role == "user":
            pending = text
        else:
            history.append((pending or "", text))
            pending = None
    return ("\n\n".join(system) or None), joined[-1][1], tuple(history)
