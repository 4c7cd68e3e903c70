"""A run's log (runs/channel.py `log`, runs/buffers.py): a local run keeps each answer delta as its
text, so the garbage collector never walks a live run's answer; everyone but the streaming
follower reads `Event`s; every encoder gives the same bytes for the log as for the events."""

from __future__ import annotations

import gc
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from tokenrelay.events import AnswerDelta, Event, Narration, ReasoningDelta, RunFinished, RunStarted
from tokenrelay.runs import RunChannel
from tokenrelay.runs.buffers import EventsView, FinishedEvents, OffsetEvents
from tokenrelay.server.routes.chat import _encode_text
from tokenrelay.server.routes.openai import _ChunkEncoder
from tokenrelay.sse import encode_batch

TEXTS = st.text(max_size=6)
EVENTS = st.lists(
    st.builds(AnswerDelta, text=TEXTS)
    | st.builds(ReasoningDelta, text=TEXTS)
    | st.builds(Narration, text=TEXTS),
    max_size=8,
)


def channel(**kwargs: object) -> RunChannel:
    return RunChannel("run_1", owner=None, session_id=None, **kwargs)  # type: ignore[arg-type]


def test_a_live_runs_answer_is_text_the_collector_does_not_track() -> None:
    ch = channel()
    ch.publish(RunStarted(run_id="run_1"))
    for i in range(1000):
        ch.publish(AnswerDelta(text=f"w{i} "))
        if i % 100 == 0:
            ch.publish(ReasoningDelta(text="thinking"))
    tracked = [item for item in ch.log if gc.is_tracked(item)]
    assert len(tracked) == 1 + 10  # the run's start and its reasoning deltas: not a single answer delta
    assert all(type(item) is str for item in ch.log if not gc.is_tracked(item))
    # everyone else reads events, built on access, and the answer whole
    assert isinstance(ch.events, EventsView) and len(ch.events) == len(ch.log) == 1011
    assert ch.events[1] == AnswerDelta(text="w0 ") and ch.events[-1] == AnswerDelta(text="w999 ")
    assert ch.events[1:3] == [AnswerDelta(text="w0 "), ReasoningDelta(text="thinking")]
    assert ch.answer() == "".join(f"w{i} " for i in range(1000))


def test_the_log_follows_the_run_and_ends_compact_with_the_same_events() -> None:
    ch = channel()
    view = ch.events
    ch.publish(RunStarted(run_id="run_1"))
    ch.publish(AnswerDelta(text="a"))
    assert len(view) == 2 and view[1] == AnswerDelta(text="a")  # a view, not a copy
    live = ch.log
    ch.publish(RunFinished(answer="a"))
    assert isinstance(ch.log, FinishedEvents) and ch.log is ch.events  # the compact copy, read as events
    assert list(ch.events) == [RunStarted(run_id="run_1"), AnswerDelta(text="a"), RunFinished(answer="a")]
    assert live == [RunStarted(run_id="run_1"), "a", RunFinished(answer="a")]  # what current followers hold


def test_a_remote_channel_keeps_the_events_it_is_given() -> None:
    ch = channel(events=OffsetEvents(5))
    ch.publish(AnswerDelta(text="x"))
    assert ch.events is ch.log and ch.events[5] == AnswerDelta(text="x") and ch.answer() == "x"


def test_replication_is_handed_events_not_text() -> None:
    ch = channel()
    ch.publish(AnswerDelta(text="a"))
    seen: list[tuple[int, Event]] = []
    ch.replicate(lambda index, event: seen.append((index, event)))
    ch.publish(AnswerDelta(text="b"))
    assert seen == [(0, AnswerDelta(text="a")), (1, AnswerDelta(text="b"))]


@settings(max_examples=200, deadline=None)
@given(events=EVENTS, first_id=st.integers(0, 1000))
def test_every_encoder_gives_the_same_bytes_for_the_log_as_for_the_events(
    events: list[Event], first_id: int
) -> None:
    log: list[Event | str] = [e.text if type(e) is AnswerDelta else e for e in events]
    assert encode_batch(log, first_id) == encode_batch(events, first_id)
    assert _encode_text(log, first_id) == _encode_text(events, first_id)
    for reasoning in (False, True):
        encoder = _ChunkEncoder("chatcmpl-1", "m", False, reasoning)
        assert encoder(log, first_id) == encoder(events, first_id)


def test_the_frames_of_text_items_are_answer_deltas() -> None:
    frames = encode_batch(["Hi", ReasoningDelta(text="r"), '"}\n'], 7).decode()
    blocks = [b for b in frames.split("\n\n") if b]
    assert [json.loads(b.split("data: ", 1)[1]) for b in blocks] == [
        {"type": "answer_delta", "text": "Hi"},
        {"type": "reasoning_delta", "text": "r"},
        {"type": "answer_delta", "text": '"}\n'},
    ]
    assert [b.split("\n", 1)[0] for b in blocks] == ["id: 7", "id: 8", "id: 9"]
