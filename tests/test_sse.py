"""`tokenrelay.sse`: the incremental SSE decoder, against the HTML standard's parsing rules.

The property tests build streams from a model of events (comments, names, multi-line data,
ids, retry, any of the three line ends, a BOM), serialize them, cut the bytes anywhere, and
check that the decoder gives exactly the model's events; and that tokenrelay's own encoder
(`tokenrelay.sse`) round-trips through it whatever the text holds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenrelay.events import AnswerDelta, Event, Narration, ReasoningDelta, RunFinished, event_from_dict
from tokenrelay.sse import ServerSentEvent, SSEDecodeError, SSEDecoder, encode_batch


def decode(data: bytes | str, *cuts: int, flush: bool = False) -> list[ServerSentEvent]:
    """Feed `data` cut at `cuts` (sorted positions), then finish."""
    decoder = SSEDecoder()
    out: list[ServerSentEvent] = []
    last = 0
    for cut in [*cuts, len(data)]:
        out += decoder.feed(data[last:cut])
        last = cut
    return out + decoder.finish(flush=flush)


def ev(event: str, data: str, id: str = "", retry: int | None = None) -> ServerSentEvent:
    return ServerSentEvent(event, data, id, retry)


# --------------------------------------------------------------------------- examples


MIXED = (
    ": keep-alive\r\n\r\n"
    'id: 0\r\nevent: run_started\r\ndata: {"a": 1}\r\n\r\n'
    'event: answer_delta\rdata: {"text": "x\u2028y\x85z 東"}\r\r'
    "event: multi\ndata: line1\ndata:line2\n\n"
    "data: no event name\n\n"
    "event: unterminated\ndata: dropped"
).encode()
MIXED_EVENTS = [
    ev("run_started", '{"a": 1}', "0"),
    ev("answer_delta", '{"text": "x\u2028y\x85z 東"}', "0"),
    ev("multi", "line1\nline2", "0"),
    ev("message", "no event name", "0"),
]


def test_the_standard_at_every_split() -> None:
    assert decode(MIXED) == MIXED_EVENTS
    for cut in range(1, len(MIXED)):
        assert decode(MIXED, cut) == MIXED_EVENTS, cut
    assert decode(MIXED, *range(1, len(MIXED))) == MIXED_EVENTS  # byte by byte
    text = MIXED.decode()
    assert decode(text, *range(1, len(text))) == MIXED_EVENTS  # str chunks too


def test_a_cr_dispatches_at_once_and_its_lf_in_the_next_chunk_is_not_a_second_line_end() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: x\r\r") == [ev("message", "x")]  # not held back for a possible LF
    assert decoder.feed(b"\ndata: y\r") == []  # that LF paired with the CR before it
    assert decoder.feed(b"\n\n") == [ev("message", "y")]


def test_fields_as_the_standard_reads_them() -> None:
    stream = (
        "data\n\n"  # a field name alone: empty value
        "data:\n\n"  # an empty data line is still data
        "data:  two spaces\n\n"  # only one space is removed
        "event: a:b\ndata: x:y\n\n"  # colons after the first belong to the value
        "unknown: field\ndata: z\n\n"
        "event: no data\n\n"  # no data: no event, and the type does not leak into the next
        "data: w\n\n"
    )
    assert decode(stream) == [
        ev("message", ""),
        ev("message", ""),
        ev("message", " two spaces"),
        ev("a:b", "x:y"),
        ev("message", "z"),
        ev("message", "w"),
    ]


def test_ids_persist_until_changed_and_nul_ids_are_ignored() -> None:
    decoder = SSEDecoder()
    events = decoder.feed("id: 7\ndata: a\n\ndata: b\n\nid: 8\x00\ndata: c\n\nid: 9\n\n")
    assert [e.id for e in events] == ["7", "7", "7"]
    assert decoder.last_event_id == "9"  # a block without data still sets it
    assert decoder.feed("id\ndata: d\n\n") == [ev("message", "d", "")]  # an empty id resets it
    assert SSEDecoder(last_event_id="41").feed("data: e\n\n") == [ev("message", "e", "41")]


def test_retry_counts_only_when_it_is_all_ascii_digits() -> None:
    decoder = SSEDecoder()
    assert decoder.feed("retry: 1500\n\n") == [] and decoder.retry == 1500
    events = decoder.feed("retry: 12a\nretry: ２\nretry: -1\ndata: x\n\nretry: 30\ndata: y\n\n")
    assert events == [ev("message", "x", "", None), ev("message", "y", "", 30)]
    assert decoder.retry == 30


def test_a_bom_is_dropped_only_at_the_very_start() -> None:
    bom = "\ufeff".encode()
    assert decode(bom + b"data: a\n\n", 1, 2) == [ev("message", "a")]  # even split inside the BOM
    assert decode("\ufeffdata: a\n\n\ufeffdata: b\n\n") == [ev("message", "a")]  # later: a field name


def test_bytes_that_are_not_utf8_become_replacement_characters() -> None:
    assert decode(b"data: \xff\xfe ok\n\n", 8) == [ev("message", "\ufffd\ufffd ok")]


def test_an_unterminated_last_event_is_dropped_unless_flushed() -> None:
    assert decode("data: [DONE]") == []
    assert decode("data: [DONE]\n") == []
    assert decode("data: [DONE]", flush=True) == [ev("message", "[DONE]")]
    assert decode("data: a\ndata: b\n", flush=True) == [ev("message", "a\nb")]
    assert decode("data: a\n\n", flush=True) == [ev("message", "a")]  # nothing twice


def test_an_openai_style_stream() -> None:
    chunks = [
        b'data: {"choices":[{"delta":{"content":"\xe6\x9d',
        b'\xb1"}}]}\n\ndata: {"choices":[]}\n\n',
        b": ping\n\ndata: [DONE]\n\n",
    ]
    decoder = SSEDecoder()
    data = [e.data for chunk in chunks for e in decoder.feed(chunk)]
    assert [json.loads(d) for d in data[:2]] == [{"choices": [{"delta": {"content": "東"}}]}, {"choices": []}]
    assert data[2] == "[DONE]"


def test_max_buffer_bounds_a_line_and_an_event() -> None:
    with pytest.raises(SSEDecodeError, match="longer than 10"):
        SSEDecoder(max_buffer=10).feed("data: 0123456789")
    decoder = SSEDecoder(max_buffer=10)
    with pytest.raises(SSEDecodeError, match="larger than 10"):
        decoder.feed("data: 0123\ndata: 4567\ndata: 89\n")
    assert SSEDecoder(max_buffer=10).feed("data: 01234\n\n") == [ev("message", "01234")]


# --------------------------------------------------------------------------- properties


@dataclass
class Block:
    comments: list[str]
    event: str | None
    data: list[str]
    id: str | None
    retry: str | None
    unknown: str | None


line_text = st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=12)
field_value = st.one_of(line_text, st.sampled_from([" lead", "a: b", "\u2028\x85\x0b", "\x00", "東京 🎌"]))
blocks = st.builds(
    Block,
    comments=st.lists(line_text, max_size=2),
    event=st.none()
    | st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=8),
    data=st.lists(field_value, max_size=3),
    id=st.none() | field_value,
    retry=st.none() | st.sampled_from(["0", "250", "3000", "1x", "", " 5"]),
    unknown=st.none() | line_text,
)


def serialize(
    blocks: list[Block], endings: list[str], bom: bool, terminated: bool
) -> tuple[str, list[ServerSentEvent]]:
    """The stream text, and the events the standard says it holds."""
    lines: list[str] = []
    expected: list[ServerSentEvent] = []
    last_id = ""
    for index, block in enumerate(blocks):
        lines += [":" + c for c in block.comments]
        if block.event is not None:
            lines.append("event: " + block.event)
        lines += ["data: " + d for d in block.data]
        if block.id is not None:
            lines.append("id: " + block.id)
        if block.retry is not None:
            lines.append("retry:" + block.retry)
        if block.unknown is not None:
            lines.append("x-unknown: " + block.unknown)
        if index < len(blocks) - 1 or terminated:
            lines.append("")
            if block.id is not None and "\x00" not in block.id:
                last_id = block.id
            if block.data:
                value = block.retry.removeprefix(" ") if block.retry is not None else ""
                retry = int(value) if value.isascii() and value.isdigit() else None
                expected.append(
                    ServerSentEvent(block.event or "message", "\n".join(block.data), last_id, retry)
                )
    out: list[str] = ["\ufeff"] if bom else []
    previous = ""
    for i, line in enumerate(lines):
        ending = endings[i % len(endings)]
        if previous == "\r" and not line and ending == "\n":
            ending = "\r"  # "\r" then an empty line ended by "\n" would read as one CRLF
        out.append(line + ending)
        previous = ending
    return "".join(out), expected


@settings(max_examples=400, deadline=None)
@given(
    blocks=st.lists(blocks, max_size=6),
    endings=st.lists(st.sampled_from(["\n", "\r", "\r\n"]), min_size=1, max_size=5),
    bom=st.booleans(),
    terminated=st.booleans(),
    data=st.data(),
)
def test_any_stream_split_anywhere_gives_the_events_the_standard_says(
    blocks: list[Block], endings: list[str], bom: bool, terminated: bool, data: st.DataObject
) -> None:
    text, expected = serialize(blocks, endings, bom, terminated)
    raw = text.encode()
    cuts = sorted(data.draw(st.sets(st.integers(0, len(raw)), max_size=8)))
    assert decode(raw, *cuts) == expected
    str_cuts = sorted(data.draw(st.sets(st.integers(0, len(text)), max_size=8)))
    assert decode(text, *str_cuts) == expected


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=200), data=st.data())
def test_any_bytes_split_anywhere_decode_the_same_and_never_raise(raw: bytes, data: st.DataObject) -> None:
    cuts = sorted(data.draw(st.sets(st.integers(0, len(raw)), max_size=10)))
    assert decode(raw, *cuts) == decode(raw)
    assert decode(raw, *cuts, flush=True) == decode(raw, flush=True)


@settings(max_examples=300, deadline=None)
@given(texts=st.lists(st.text(max_size=20), min_size=1, max_size=6), data=st.data())
def test_tokenrelays_own_frames_round_trip_whatever_the_text(texts: list[str], data: st.DataObject) -> None:
    events = [*(AnswerDelta(text=t) for t in texts), RunFinished(answer="".join(texts))]
    raw = b"".join(encode_batch([e], i) for i, e in enumerate(events))
    cuts = sorted(data.draw(st.sets(st.integers(0, len(raw)), max_size=8)))
    frames = decode(raw, *cuts)
    assert [f.id for f in frames] == [str(i) for i in range(len(events))]
    decoded = [event_from_dict(json.loads(f.data)) for f in frames]
    assert [f.event for f in frames] == [e.type for e in events]
    assert decoded[:-1] == events[:-1]
    assert isinstance(decoded[-1], RunFinished) and decoded[-1].answer == "".join(texts)


TEXTS = st.text(max_size=8)
DELTAS = st.builds(AnswerDelta, text=TEXTS) | st.builds(ReasoningDelta, text=TEXTS)
OTHERS = st.builds(Narration, text=TEXTS)


@settings(max_examples=300, deadline=None)
@given(events=st.lists(DELTAS | OTHERS, min_size=1, max_size=6), first_id=st.integers(0, 10_000))
def test_a_batch_is_the_same_text_and_kinds_as_its_events_one_by_one(
    events: list[Event], first_id: int
) -> None:
    """What a follower that fell behind (or `full` mode's reasoning + answer pair) gets in one
    write: adjacent deltas of one kind merged, every text unchanged and in order, the last id
    that of the last event (a resume from it never repeats text)."""
    frames = decode(encode_batch(events, first_id))
    decoded = [event_from_dict(json.loads(f.data)) for f in frames]
    runs: list[Event] = []
    for event in events:  # what merging adjacent deltas of one kind gives
        if runs and type(event) is type(runs[-1]) and isinstance(event, AnswerDelta | ReasoningDelta):
            runs[-1] = type(event)(text=runs[-1].text + event.text)  # type: ignore[union-attr]
        else:
            runs.append(event)
    assert decoded == runs
    ids = [int(f.id) for f in frames]
    assert ids == sorted(set(ids)) and ids[-1] == first_id + len(events) - 1
    assert all(first_id <= i < first_id + len(events) for i in ids)
