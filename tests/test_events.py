"""The event vocabulary: frozen, keyword-only values with stable `type` names and a JSON form."""

from __future__ import annotations

import dataclasses
import json
import typing
from functools import reduce
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokenrelay.events import (
    TERMINAL_TYPES,
    AnswerDelta,
    Event,
    Narration,
    ReasoningDelta,
    RunError,
    RunFinished,
    RunStarted,
    Timings,
    ToolCallFinished,
    ToolCallStarted,
    Usage,
    event_to_dict,
    new_answer_delta,
    new_reasoning_delta,
)

JAPANESE = "東京は日本の首都です。🗼"

EXPECTED_TYPES: dict[type, str] = {
    RunStarted: "run_started",
    AnswerDelta: "answer_delta",
    ReasoningDelta: "reasoning_delta",
    Narration: "narration",
    ToolCallStarted: "tool_call_started",
    ToolCallFinished: "tool_call_finished",
    RunError: "error",
    RunFinished: "run_finished",
}


def sample_events(text: str = JAPANESE) -> list[Event]:
    """One event of every type, with `text` in every free-text field."""
    return [
        RunStarted(run_id="run_1", session_id="s-" + text, model="scripted"),
        AnswerDelta(text=text),
        ReasoningDelta(text=text),
        Narration(text=text),
        ToolCallStarted(
            call_id="call_1", name="Calculator", arguments={"expression": text, "n": [1, 2.5, None]}
        ),
        ToolCallFinished(call_id="call_1", name="Calculator", result=text),
        ToolCallFinished(call_id="call_2", name="Calculator", error=text),
        RunError(message=text, code="backend", answer=text[:3]),
        RunFinished(
            answer=text,
            usage=Usage(prompt_tokens=7, completion_tokens=5),
            timings=Timings(first_token_s=0.25, total_s=1.5),
            finish_reason="length",
            intermediate_steps=(("Calculator", "2+2", "4"), ("Search", {"q": text}, text)),
        ),
    ]


def json_round_trip(data: dict[str, Any], *, ensure_ascii: bool) -> Any:
    return json.loads(json.dumps(data, ensure_ascii=ensure_ascii))


# --------------------------------------------------------------------- shape


def test_every_event_type_is_in_the_union() -> None:
    assert set(typing.get_args(Event)) == set(EXPECTED_TYPES)


@pytest.mark.parametrize("event", sample_events(), ids=lambda e: type(e).__name__)
def test_events_are_frozen(event: Event) -> None:
    for f in dataclasses.fields(event):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(event, f.name, getattr(event, f.name))
    with pytest.raises((dataclasses.FrozenInstanceError, AttributeError, TypeError)):
        event.extra = 1  # type: ignore[union-attr]


@pytest.mark.parametrize("event", sample_events(), ids=lambda e: type(e).__name__)
def test_type_literal_is_the_default_and_the_discriminator(event: Event) -> None:
    expected = EXPECTED_TYPES[type(event)]
    assert event.type == expected
    assert typing.get_args(typing.get_type_hints(type(event))["type"]) == (expected,)
    assert event_to_dict(event)["type"] == expected


def test_type_names_are_unique_and_terminal_types_are_the_two_terminal_events() -> None:
    assert len(set(EXPECTED_TYPES.values())) == len(EXPECTED_TYPES)
    assert frozenset({"run_finished", "error"}) == TERMINAL_TYPES


@pytest.mark.parametrize(
    ("cls", "args"),
    [
        (RunStarted, ("run_1",)),
        (AnswerDelta, ("hi",)),
        (ReasoningDelta, ("hi",)),
        (ToolCallStarted, ("c", "n", {})),
        (ToolCallFinished, ("c", "n", "r")),
        (RunError, ("boom",)),
        (RunFinished, ("answer",)),
        (Usage, (1, 2)),
        (Timings, (0.1, 0.2)),
    ],
)
def test_events_are_keyword_only(cls: type, args: tuple[Any, ...]) -> None:
    with pytest.raises(TypeError):
        cls(*args)


def test_events_compare_by_value() -> None:
    assert AnswerDelta(text="a") == AnswerDelta(text="a")
    assert AnswerDelta(text="a") != ReasoningDelta(text="a")
    assert hash(AnswerDelta(text="a")) == hash(AnswerDelta(text="a"))


def test_defaults() -> None:
    finished = RunFinished(answer="x")
    assert finished.usage == Usage()
    assert finished.timings == Timings()
    assert finished.finish_reason == "stop"
    assert finished.intermediate_steps == ()
    error = RunError(message="m")
    assert error.code == "internal"
    assert error.answer == ""
    started = RunStarted(run_id="r")
    assert started.session_id is None
    done = ToolCallFinished(call_id="c", name="n")
    assert done.result is None and done.error is None


# --------------------------------------------------------------------- JSON form


@pytest.mark.parametrize("ensure_ascii", [True, False])
@pytest.mark.parametrize("event", sample_events(), ids=lambda e: type(e).__name__)
def test_event_to_dict_round_trips_through_json(event: Event, ensure_ascii: bool) -> None:
    data = event_to_dict(event)
    assert json_round_trip(data, ensure_ascii=ensure_ascii) == data


@pytest.mark.parametrize(
    "event",
    [e for e in sample_events() if not isinstance(e, RunFinished)],
    ids=lambda e: type(e).__name__,
)
def test_simple_events_rebuild_from_their_json(event: Event) -> None:
    data = json_round_trip(event_to_dict(event), ensure_ascii=True)
    assert type(event)(**data) == event


def test_delta_dicts_are_exactly_type_and_text() -> None:
    assert event_to_dict(AnswerDelta(text=JAPANESE)) == {"type": "answer_delta", "text": JAPANESE}
    assert event_to_dict(ReasoningDelta(text="…")) == {"type": "reasoning_delta", "text": "…"}


def test_japanese_text_survives_unescaped() -> None:
    line = json.dumps(event_to_dict(AnswerDelta(text=JAPANESE)), ensure_ascii=False)
    assert JAPANESE in line
    assert json.loads(line)["text"] == JAPANESE


def test_run_finished_dict_has_usage_timings_and_steps() -> None:
    finished = sample_events()[-1]
    assert isinstance(finished, RunFinished)
    data = json_round_trip(event_to_dict(finished), ensure_ascii=True)
    assert data == {
        "type": "run_finished",
        "answer": JAPANESE,
        "finish_reason": "length",
        "usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12},
        "timings": {"first_token_s": 0.25, "total_s": 1.5},
        "intermediate_steps": [
            {"tool": "Calculator", "input": "2+2", "observation": "4"},
            {"tool": "Search", "input": {"q": JAPANESE}, "observation": JAPANESE},
        ],
    }


def test_run_finished_without_first_token_serialises_null() -> None:
    data = event_to_dict(RunFinished(answer=""))
    assert json.loads(json.dumps(data))["timings"] == {"first_token_s": None, "total_s": 0.0}


def test_error_dict_carries_code_and_partial_answer() -> None:
    data = json_round_trip(
        event_to_dict(RunError(message="down", code="backend", answer="part")), ensure_ascii=True
    )
    assert data == {"type": "error", "message": "down", "code": "backend", "answer": "part"}


@given(text=st.text())
def test_any_text_round_trips_in_every_event(text: str) -> None:
    for event in sample_events(text):
        data = event_to_dict(event)
        assert json_round_trip(data, ensure_ascii=False) == data
        assert json_round_trip(data, ensure_ascii=True) == data


# --------------------------------------------------------------------- Usage


def test_usage_addition() -> None:
    total = Usage(prompt_tokens=10, completion_tokens=3) + Usage(prompt_tokens=5, completion_tokens=4)
    assert total == Usage(prompt_tokens=15, completion_tokens=7)
    assert total.total_tokens == 22


def test_usage_zero_is_the_identity_and_addition_does_not_mutate() -> None:
    a = Usage(prompt_tokens=2, completion_tokens=1)
    assert a + Usage() == a == Usage() + a
    b = a + a
    assert a == Usage(prompt_tokens=2, completion_tokens=1)
    assert b == Usage(prompt_tokens=4, completion_tokens=2)
    assert Usage().total_tokens == 0


@given(st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 10**6)), max_size=20))
def test_usage_sums_like_integers(pairs: list[tuple[int, int]]) -> None:
    total = reduce(
        lambda acc, u: acc + u, (Usage(prompt_tokens=p, completion_tokens=c) for p, c in pairs), Usage()
    )
    assert total.prompt_tokens == sum(p for p, _ in pairs)
    assert total.completion_tokens == sum(c for _, c in pairs)
    assert total.total_tokens == sum(p + c for p, c in pairs)


@given(text=st.text())
def test_the_fast_delta_constructors_build_the_same_frozen_events(text: str) -> None:
    """The per-token constructors set the slots directly; what they build is indistinguishable."""
    for fast, cls in ((new_answer_delta, AnswerDelta), (new_reasoning_delta, ReasoningDelta)):
        event = fast(text)
        assert type(event) is cls and event == cls(text=text) and hash(event) == hash(cls(text=text))
        assert event_to_dict(event) == event_to_dict(cls(text=text))
        with pytest.raises(dataclasses.FrozenInstanceError):
            event.text = "x"  # type: ignore[misc]
