"""The event vocabulary: everything a run can emit, as a closed set of frozen dataclasses.

Every consumer (terminal, HTTP raw text, typed SSE, OpenAI chunks, the web page) is a pure
function of one stream of these events. Invariants of a well-formed stream:

* it starts with exactly one `RunStarted`;
* it ends with exactly one terminal event, `RunFinished` or `RunError`, and nothing follows it;
* the concatenated `AnswerDelta.text`, with the text of every `Narration` taken out, equals
  `RunFinished.answer` (or the partial answer a `RunError` carries);
* a `Narration` re-labels answer text already streamed: its `text` is exactly the end of the
  answer text streamed since the previous `Narration` (or since the start). A consumer that
  ignores it still shows correct text: what the model said, in order;
* every `ToolCallStarted` is followed by one `ToolCallFinished` with the same `call_id`.

The `type` field is a `Literal` discriminator and is also the SSE `event:` name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

__all__ = [
    "AnswerDelta",
    "Event",
    "ReasoningDelta",
    "RunError",
    "RunFinished",
    "RunStarted",
    "Timings",
    "ToolCallFinished",
    "ToolCallStarted",
    "Usage",
    "event_from_dict",
    "event_to_dict",
    "final_answer",
    "Narration",
    "new_answer_delta",
    "new_reasoning_delta",
]


@dataclass(frozen=True, kw_only=True, slots=True)
class Usage:
    """Token counts as reported by the backend (summed over every model call of a run)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class Timings:
    """Wall-clock figures of one run, in seconds since the run started."""

    first_token_s: float | None = None
    total_s: float = 0.0


@dataclass(frozen=True, kw_only=True, slots=True)
class RunStarted:
    run_id: str
    session_id: str | None = None
    model: str = ""
    type: Literal["run_started"] = "run_started"


@dataclass(frozen=True, kw_only=True, slots=True)
class AnswerDelta:
    """A piece of the final answer: exactly the characters the user should see, in order."""

    text: str
    type: Literal["answer_delta"] = "answer_delta"


@dataclass(frozen=True, kw_only=True, slots=True)
class ReasoningDelta:
    """Agent-internal text: model reasoning, or raw agent output in `full` stream mode."""

    text: str
    type: Literal["reasoning_delta"] = "reasoning_delta"


_Delta = TypeVar("_Delta", AnswerDelta, ReasoningDelta)


def _delta_builder(cls: type[_Delta], kind: str) -> Callable[[str], _Delta]:
    """`cls(text=text)` at half the cost, for the per-token hot path: a frozen dataclass's
    generated `__init__` goes through `object.__setattr__` per field; this sets the slots directly."""
    new, set_text, set_type = object.__new__, cls.__dict__["text"].__set__, cls.__dict__["type"].__set__

    def build(text: str) -> _Delta:
        event: _Delta = new(cls)
        set_text(event, text)
        set_type(event, kind)
        return event

    build.__name__ = build.__qualname__ = f"new_{kind}"
    return build


#: `AnswerDelta(text=text)` at half the cost (the answer's per-token path)
new_answer_delta = _delta_builder(AnswerDelta, "answer_delta")
#: `ReasoningDelta(text=text)` at half the cost (`full` mode's per-token path: the raw model output)
new_reasoning_delta = _delta_builder(ReasoningDelta, "reasoning_delta")


@dataclass(frozen=True, kw_only=True, slots=True)
class Narration:
    """Answer text already streamed turned out to be the model speaking before it acted.

    Answer text streams the moment the model writes it. When the same model message then
    calls a tool, the text streamed since the last `Narration` (or since the run started) was
    narration ("Let me calculate that."), not the final answer. It stays shown; this event
    tells typed consumers to re-label exactly the trailing `text` of what they received as
    answer text (the page folds it into the tool step that follows). It is never part of
    `RunFinished.answer`, and a consumer that ignores this event still shows every character
    once, in order: narration, then the answer. The agent ends narration with a blank line
    (streamed as an answer delta, and part of `text`) so that plain-text consumers see the
    narration and the answer as separate paragraphs.
    """

    text: str
    type: Literal["narration"] = "narration"


@dataclass(frozen=True, kw_only=True, slots=True)
class ToolCallStarted:
    call_id: str
    name: str
    arguments: Any
    type: Literal["tool_call_started"] = "tool_call_started"


@dataclass(frozen=True, kw_only=True, slots=True)
class ToolCallFinished:
    """The outcome of a tool call; exactly one of `result` and `error` is set."""

    call_id: str
    name: str
    result: str | None = None
    error: str | None = None
    type: Literal["tool_call_finished"] = "tool_call_finished"


@dataclass(frozen=True, kw_only=True, slots=True)
class RunError:
    """Terminal: the run failed or was cancelled. `answer` holds what was streamed before."""

    message: str
    code: str = "internal"  # backend | tool | cancelled | timeout | bad_request | internal
    answer: str = ""
    type: Literal["error"] = "error"


@dataclass(frozen=True, kw_only=True, slots=True)
class RunFinished:
    """Terminal: the run completed. `answer` is the whole final answer (narration excluded).

    `finish_reason` is `stop`, or `length` when the last model call hit its token limit and the
    answer was cut off."""

    answer: str
    usage: Usage = field(default_factory=Usage)
    timings: Timings = field(default_factory=Timings)
    finish_reason: str = "stop"
    intermediate_steps: tuple[tuple[str, Any, str], ...] = ()
    type: Literal["run_finished"] = "run_finished"


Event = (
    RunStarted
    | AnswerDelta
    | ReasoningDelta
    | Narration
    | ToolCallStarted
    | ToolCallFinished
    | RunError
    | RunFinished
)

TERMINAL_TYPES = frozenset({"run_finished", "error"})


def event_to_dict(event: Event) -> dict[str, Any]:
    """A JSON-ready dict of an event. Deltas take a fast path: they are most of the traffic."""
    if type(event) is AnswerDelta or type(event) is ReasoningDelta:
        return {"type": event.type, "text": event.text}
    if isinstance(event, RunFinished):
        return {
            "type": event.type,
            "answer": event.answer,
            "finish_reason": event.finish_reason,
            "usage": {
                "prompt_tokens": event.usage.prompt_tokens,
                "completion_tokens": event.usage.completion_tokens,
                "total_tokens": event.usage.total_tokens,
            },
            "timings": {"first_token_s": event.timings.first_token_s, "total_s": event.timings.total_s},
            "intermediate_steps": [
                {"tool": tool, "input": tool_input, "observation": observation}
                for tool, tool_input, observation in event.intermediate_steps
            ],
        }
    return {name: getattr(event, name) for name in event.__slots__}


_BY_TYPE: dict[str, type[Any]] = {
    str(cls.__dataclass_fields__["type"].default): cls
    for cls in (
        RunStarted,
        AnswerDelta,
        ReasoningDelta,
        Narration,
        ToolCallStarted,
        ToolCallFinished,
        RunError,
        RunFinished,
    )
}


def event_from_dict(data: dict[str, Any]) -> Event:
    """The inverse of `event_to_dict` (for events that crossed a process boundary)."""
    kind = data.get("type")
    cls = _BY_TYPE.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ValueError(f"unknown event type {kind!r}")
    if cls is RunFinished:
        usage = data.get("usage") or {}
        timings = data.get("timings") or {}
        return RunFinished(
            answer=data.get("answer", ""),
            usage=Usage(
                prompt_tokens=usage.get("prompt_tokens", 0),
                completion_tokens=usage.get("completion_tokens", 0),
            ),
            timings=Timings(first_token_s=timings.get("first_token_s"), total_s=timings.get("total_s", 0.0)),
            finish_reason=data.get("finish_reason", "stop"),
            intermediate_steps=tuple(
                (s["tool"], s["input"], s["observation"]) for s in data.get("intermediate_steps", ())
            ),
        )
    fields = {k: v for k, v in data.items() if k != "type" and k in cls.__dataclass_fields__}
    event: Event = cls(**fields)
    return event


def final_answer(events: Iterable[Event]) -> str:
    """The final answer as a typed consumer shows it: the answer deltas' text, with every
    `Narration` taking its text back off the end (for a well-formed stream, it is there)."""
    parts: list[str] = []
    for event in events:
        if type(event) is AnswerDelta:
            parts.append(event.text)
        elif type(event) is Narration:
            shown = "".join(parts)
            parts = [shown[: len(shown) - len(event.text)] if shown.endswith(event.text) else shown]
    return "".join(parts)
