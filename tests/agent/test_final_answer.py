"""Tests for tokenrelay.agent.final_answer (incremental JSON-action extraction)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenrelay.agent.final_answer import (
    FINAL_ANSWER_ACTIONS,
    ExtractionError,
    FinalAnswerExtractor,
)

# --------------------------------------------------------------------- helpers


def feed_all(
    chunks: Sequence[str], *, plain_text_fallback: bool = True
) -> tuple[FinalAnswerExtractor, list[str]]:
    """Feed every chunk, then finish; return the extractor and all returns."""
    ex = FinalAnswerExtractor(plain_text_fallback=plain_text_fallback)
    outs = [ex.feed(c) for c in chunks]
    outs.append(ex.finish())
    return ex, outs


def extract(text: str, chunks: Sequence[str] | None = None) -> tuple[FinalAnswerExtractor, str]:
    ex, outs = feed_all([text] if chunks is None else chunks)
    return ex, "".join(outs)


def split_at(text: str, cuts: Sequence[int]) -> list[str]:
    bounds = [0, *sorted(set(cuts)), len(text)]
    return [text[a:b] for a, b in pairwise(bounds) if b > a]


def state(ex: FinalAnswerExtractor) -> tuple[object, ...]:
    return (ex.action, ex.action_input, ex.is_final, ex.complete, ex.error, ex.answer)


def decode_partial(raw: str) -> str:
    """Longest decodable prefix of a JSON string body, holding back a lone high surrogate."""
    for trim in range(7):
        try:
            text: str = json.loads('"' + raw[: len(raw) - trim] + '"', strict=False)
        except ValueError:
            continue
        if text and 0xD800 <= ord(text[-1]) < 0xDC00:
            text = text[:-1]
        return text
    raise AssertionError(f"cannot decode {raw!r}")


@dataclass
class Doc:
    text: str
    spans: dict[str, tuple[int, int]]  # key -> (start, end) of its serialized value


@dataclass
class Layout:
    ensure_ascii: bool
    kv_sep: str
    item_sep: str
    inner_pad: str
    order: list[int]
    prefix: str
    fence: bool
    suffix: str


def build(pairs: list[tuple[str, object]], layout: Layout) -> Doc:
    ordered = [pairs[i] for i in layout.order]
    text = layout.prefix + ("```json\n" if layout.fence else "") + "{" + layout.inner_pad
    spans: dict[str, tuple[int, int]] = {}
    for idx, (key, value) in enumerate(ordered):
        if idx:
            text += layout.item_sep
        text += json.dumps(key, ensure_ascii=layout.ensure_ascii) + layout.kv_sep
        dumped = json.dumps(value, ensure_ascii=layout.ensure_ascii)
        spans[key] = (len(text), len(text) + len(dumped))
        text += dumped
    text += layout.inner_pad + "}" + ("\n```" if layout.fence else "") + layout.suffix
    return Doc(text, spans)


# ------------------------------------------------------------------ strategies

TOKENS = [
    '"',
    "'",
    "{",
    "}",
    "[",
    "]",
    "\\",
    "\\n",
    "\\u",
    "\\ud83d",
    "\n",
    "\r",
    "\t",
    "\x00",
    "\x1f",
    "\x7f",
    ":",
    ",",
    " ",
    "😀",
    "👍🏽",
    "日本語",
    "こんにちは",
    "é",
    "\u2028",
    "\ufeff",
    "Final Answer",
    '"action": "Final Answer"',
    '{"action_input": "x"}',
    "```",
    "abc",
]

answer_text = st.one_of(
    st.text(),
    st.lists(st.sampled_from(TOKENS), max_size=20).map("".join),
    st.text(alphabet=st.sampled_from(list('"{}\\/\n\t\x01😀日a ')), max_size=30),
)

final_names = st.sampled_from(
    ["Final Answer", "final answer", "FINAL ANSWER", " Final Answer ", "final_answer", "FinalAnswer"]
)
tool_names = st.one_of(
    st.sampled_from(["Calculator", "Search", "Final Answer Checker", "final", "python_repl"]),
    st.text(min_size=1, max_size=12),
).filter(lambda a: a.strip().casefold() not in FINAL_ANSWER_ACTIONS)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    answer_text,
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(answer_text, inner, max_size=4)),
    max_leaves=10,
)
extra_keys = st.dictionaries(
    st.text(max_size=10).filter(lambda k: k not in ("action", "action_input")),
    json_values,
    max_size=3,
)
prefixes = st.one_of(
    st.just(""),
    st.sampled_from(["Sure! Here is my answer:\n", "Thought: done.\n\n", "  \n"]),
    st.text(max_size=20).filter(lambda p: "{" not in p),
)
suffixes = st.one_of(
    st.just(""),
    st.sampled_from(["\n", "\nHope this helps {!}", ' {"action": "Final Answer"}']),
    st.text(max_size=20),
)


@st.composite
def documents(draw: st.DrawFn, action: str, action_input: object) -> Doc:
    pairs: list[tuple[str, object]] = [("action", action), ("action_input", action_input)]
    pairs += list(draw(extra_keys).items())
    layout = Layout(
        ensure_ascii=draw(st.booleans()),
        kv_sep=draw(st.sampled_from([":", ": ", " : ", ":\n  "])),
        item_sep=draw(st.sampled_from([",", ", ", ",\n  ", " ,\t"])),
        inner_pad=draw(st.sampled_from(["", " ", "\n  ", "\r\n"])),
        order=draw(st.permutations(range(len(pairs)))),
        prefix=draw(prefixes),
        fence=draw(st.booleans()),
        suffix=draw(suffixes),
    )
    return build(pairs, layout)


@st.composite
def final_case(draw: st.DrawFn) -> tuple[str, Doc]:
    answer = draw(answer_text)
    return answer, draw(documents(draw(final_names), answer))


@st.composite
def splits(draw: st.DrawFn, text: str) -> list[str]:
    if not text:
        return []
    cuts = draw(st.lists(st.integers(min_value=1, max_value=len(text)), max_size=len(text)))
    return split_at(text, cuts)


def expected_emitted(doc: Doc, answer: str, k: int) -> str:
    """What must have been emitted once the first ``k`` chars have been fed."""
    a_start, a_end = doc.spans["action"]
    i_start, i_end = doc.spans["action_input"]
    if a_end < i_start:  # action first: genuinely streaming
        if k <= i_start + 1:
            return ""
        if k >= i_end:
            return answer
        return decode_partial(doc.text[i_start + 1 : k])
    return answer if k >= a_end else ""  # buffered until the action is known


# ------------------------------------------------------------ property tests


@settings(max_examples=300, deadline=None)
@given(case=final_case(), data=st.data())
def test_final_answer_any_split(case: tuple[str, Doc], data: st.DataObject) -> None:
    answer, doc = case
    chunks = data.draw(splits(doc.text))
    ex = FinalAnswerExtractor()
    outs: list[str] = []
    fed = 0
    for chunk in chunks:
        outs.append(ex.feed(chunk))
        fed += len(chunk)
        # Eager and exact: everything completed so far, nothing more.
        assert "".join(outs) == expected_emitted(doc, answer, fed)
    outs.append(ex.finish())
    assert "".join(outs) == answer
    assert ex.answer == answer
    assert ex.action_input == answer
    assert ex.is_final is True
    assert ex.complete is True
    assert ex.error is None
    assert ex.raw == doc.text


@settings(max_examples=300, deadline=None)
@given(case=final_case())
def test_final_answer_char_by_char_is_exactly_eager(case: tuple[str, Doc]) -> None:
    answer, doc = case
    ex = FinalAnswerExtractor()
    emitted = ""
    for k, ch in enumerate(doc.text, start=1):
        emitted += ex.feed(ch)
        assert emitted == expected_emitted(doc, answer, k)
    emitted += ex.finish()
    assert emitted == answer
    assert (ex.complete, ex.error) == (True, None)


@settings(max_examples=300, deadline=None)
@given(
    name=tool_names,
    value=json_values,
    data=st.data(),
)
def test_tool_action_emits_nothing(name: str, value: object, data: st.DataObject) -> None:
    doc = data.draw(documents(name, value))
    ex, outs = feed_all(data.draw(splits(doc.text)))
    assert outs == [""] * len(outs)
    assert ex.answer == ""
    assert ex.action == name
    assert ex.is_final is False
    assert ex.action_input == value
    assert (ex.complete, ex.error) == (True, None)


@settings(max_examples=300, deadline=None)
@given(
    name=final_names,
    value=json_values.filter(lambda v: not isinstance(v, str)),
    data=st.data(),
)
def test_final_non_string_input(name: str, value: object, data: st.DataObject) -> None:
    doc = data.draw(documents(name, value))
    ex, outs = feed_all(data.draw(splits(doc.text)))
    if isinstance(value, (dict, list)):
        expected = json.dumps(value, ensure_ascii=False)
    elif value is None:
        expected = ""
    elif isinstance(value, bool):
        expected = json.dumps(value)
    else:
        expected = str(value)
    assert "".join(outs) == expected
    assert outs[-1] == ""  # emitted by feed, as soon as complete
    assert ex.action_input == value
    assert (ex.is_final, ex.complete, ex.error) == (True, True, None)


@st.composite
def mangled_outputs(draw: st.DrawFn) -> str:
    text = draw(final_case())[1].text
    for _ in range(draw(st.integers(0, 3))):
        i = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["insert", "delete", "truncate"]))
        if op == "insert":
            text = text[:i] + draw(st.sampled_from(list('"{}[]\\:,u ax0'))) + text[i:]
        elif op == "delete":
            text = text[:i] + text[i + 1 :]
        else:
            text = text[:i]
    return text


@settings(max_examples=300, deadline=None)
@given(text=st.one_of(mangled_outputs(), st.text()), data=st.data())
def test_arbitrary_output_never_raises_and_is_split_invariant(text: str, data: st.DataObject) -> None:
    whole, whole_out = extract(text)
    ex, outs = feed_all(data.draw(splits(text)))
    assert "".join(outs) == whole_out == ex.answer
    assert state(ex) == state(whole)
    if ex.error is None and "{" in text:
        assert ex.complete


# ----------------------------------------------------------- regression tests


def test_quote_and_brace_in_answer_are_kept() -> None:
    answer = 'Use {"a": 1} and say "hi"} }'
    text = json.dumps({"action": "Final Answer", "action_input": answer})
    assert extract(text, list(text))[1] == answer


def test_newline_escapes_are_decoded_not_leaked() -> None:
    text = '{"action": "Final Answer", "action_input": "line1\\nline2\\t\\\\n\\/"}'
    ex, out = extract(text, list(text))
    assert out == "line1\nline2\t\\n/"
    assert "\\" not in out.replace("\\n", "")


def test_final_answer_words_inside_tool_input_do_not_trigger() -> None:
    text = (
        '{"action": "Search", "action_input": "what does '
        '\\"action\\": \\"Final Answer\\", \\"action_input\\": \\"x\\"} mean? Final Answer"}'
    )
    for chunks in ([text], list(text)):
        ex, outs = feed_all(chunks)
        assert "".join(outs) == ""
        assert ex.is_final is False
        assert (
            ex.action_input == 'what does "action": "Final Answer", "action_input": "x"} mean? Final Answer'
        )


def test_final_answer_words_in_extra_key_and_answer() -> None:
    text = (
        '{"thought": "I will say \\"action\\": \\"Calculator\\"", '
        '"action": "Final Answer", "action_input": "The Final Answer is {\\"action\\": 1}"}'
    )
    assert extract(text, list(text))[1] == 'The Final Answer is {"action": 1}'


def test_no_space_after_colon() -> None:
    text = '{"action":"Final Answer","action_input":"hello"}'
    ex = FinalAnswerExtractor()
    assert ex.feed('{"action":"Final Answer","action_input":"') == ""
    assert ex.feed("hel") == "hel"
    assert ex.feed('lo"}') == "lo"
    assert ex.finish() == ""
    assert ex.raw == text
    assert (ex.complete, ex.error) == (True, None)


@pytest.mark.parametrize("escaped", ["\\ud83d\\ude00", "\\uD83D\\uDE00"])
def test_surrogate_pair_split_at_every_position(escaped: str) -> None:
    text = '{"action": "Final Answer", "action_input": "a' + escaped + 'b"}'
    start = text.index("\\u")
    end = start + len(escaped)
    for i in range(len(text) + 1):
        for j in range(i, len(text) + 1):
            ex = FinalAnswerExtractor()
            outs = [ex.feed(text[:i]), ex.feed(text[i:j]), ex.feed(text[j:])]
            # the emoji is emitted by exactly the call whose chunk completes it
            stops = (i, j, len(text))
            owner = next(n for n, stop in enumerate(stops) if stop >= end)
            assert ["😀" in piece for piece in outs] == [n == owner for n in range(3)]
            assert all("\ud83d" not in p and "\ufffd" not in p for p in outs)
            assert "".join(outs) + ex.finish() == "a😀b"


def test_surrogate_pair_emitted_by_completing_chunk() -> None:
    text = '{"action": "Final Answer", "action_input": "\\ud83d\\ude00"}'
    start = text.index("\\u")
    for k in range(start, start + 12):
        ex = FinalAnswerExtractor()
        first = ex.feed(text[:k])
        assert first == ""
        assert ex.feed(text[k : start + 12]) == "😀"


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("\\ud83d", "\ufffd"),
        ("\\ud83dx", "\ufffdx"),
        ("\\ude00", "\ufffd"),
        ("\\ud83d\\ud83d\\ude00", "\ufffd😀"),
        ("\\ud83d\\u0041", "\ufffdA"),
        ("\\ud83d\\n", "\ufffd\n"),
        ("\\u00e9\\u65e5", "é日"),
    ],
)
def test_lone_surrogates_become_replacement_char(body: str, expected: str) -> None:
    text = '{"action": "Final Answer", "action_input": "' + body + '"}'
    assert extract(text)[1] == expected
    assert extract(text, list(text))[1] == expected


def test_lone_high_surrogate_not_emitted_early() -> None:
    ex = FinalAnswerExtractor()
    assert ex.feed('{"action": "Final Answer", "action_input": "x\\ud83d') == "x"
    assert ex.feed("y") == "\ufffdy"


def test_raw_multibyte_passthrough() -> None:
    answer = "日本語のテキスト 😀👍🏽 done"
    text = json.dumps({"action": "Final Answer", "action_input": answer}, ensure_ascii=False)
    assert extract(text, list(text))[1] == answer


def test_streams_incrementally_when_action_first() -> None:
    answer = "The quick brown fox jumps over the lazy dog. " * 5
    text = json.dumps({"action": "Final Answer", "action_input": answer})
    half = text.index(answer) + len(answer) // 2
    ex = FinalAnswerExtractor()
    first = ex.feed(text[:half])
    assert first == answer[: len(answer) // 2]
    assert ex.is_final is True
    assert not ex.complete
    assert first + ex.feed(text[half:]) + ex.finish() == answer


def test_input_first_is_released_when_action_arrives() -> None:
    ex = FinalAnswerExtractor()
    assert ex.feed('{"action_input": "buffered \\"text\\"", ') == ""
    assert ex.is_final is None
    assert ex.action_input == 'buffered "text"'
    assert ex.feed('"action": "Final ') == ""
    assert ex.feed('Answer"') == 'buffered "text"'
    assert ex.is_final is True
    assert ex.feed("}") == ""
    assert ex.finish() == ""
    assert ex.answer == 'buffered "text"'


def test_input_first_tool_never_emits() -> None:
    ex, outs = feed_all(['{"action_input": "2+2", "action": "Calculator"}'])
    assert outs == ["", ""]
    assert (ex.action, ex.action_input, ex.is_final) == ("Calculator", "2+2", False)


def test_fenced_json_with_prose() -> None:
    text = (
        "Sure, here you go:\n```json\n"
        '{\n    "action": "Final Answer",\n    "action_input": "Paris is the capital."\n}\n'
        "```\nLet me know if {you} need more."
    )
    ex, out = extract(text, [text[i : i + 3] for i in range(0, len(text), 3)])
    assert out == "Paris is the capital."
    assert (ex.complete, ex.error) == (True, None)


def test_trailing_output_ignored() -> None:
    text = (
        '{"action": "Final Answer", "action_input": "one"}{"action": "Final Answer", "action_input": "two"}'
    )
    ex, out = extract(text)
    assert out == "one"
    assert ex.feed('"bad') == ""
    assert ex.error is None


@pytest.mark.parametrize("name", sorted(FINAL_ANSWER_ACTIONS) + ["  FINAL ANSWER\n", "Final_Answer"])
def test_final_action_name_variants(name: str) -> None:
    ex, out = extract(json.dumps({"action": name, "action_input": "ok"}))
    assert (out, ex.is_final, ex.action) == ("ok", True, name)


def test_escaped_key_names_are_decoded() -> None:
    text = '{"\\u0061ction": "Final Answer", "action\\u005finput": "hi"}'
    assert extract(text, list(text))[1] == "hi"


def test_nested_extra_values_are_skipped() -> None:
    text = (
        '{"meta": {"a": [1, {"b": "}]\\"{"}], "c": null}, "n": -1.5e3, "t": true, '
        '"action": "Final Answer", "list": [[], {}], "action_input": "ok"}'
    )
    for chunks in ([text], list(text)):
        ex, outs = feed_all(chunks)
        assert "".join(outs) == "ok"
        assert (ex.complete, ex.error) == (True, None)


def test_plain_text_fallback() -> None:
    ex, outs = feed_all(["  Paris is ", "the capital of France.\n"])
    assert outs == ["", "", "Paris is the capital of France."]
    assert (ex.action, ex.action_input, ex.is_final, ex.error) == (
        "Final Answer",
        "Paris is the capital of France.",
        True,
        None,
    )
    assert ex.answer == "Paris is the capital of France."


def test_plain_text_fallback_disabled() -> None:
    ex, outs = feed_all(["Paris."], plain_text_fallback=False)
    assert outs == ["", ""]
    assert ex.error is not None and ex.action is None


def test_empty_output_is_an_error() -> None:
    ex, outs = feed_all(["", "  "])
    assert outs == ["", "", ""]
    assert ex.error == "model output is empty"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"action" "Final Answer"}', "model output is not valid JSON: expected ':' after key at offset 10"),
        ('{"action_input": "x"}', 'missing "action" key'),
        ('{"action": "Final Answer"}', 'missing "action_input" key'),
        ('{"action": "Final Answer", "action_input": "abc', "unterminated string"),
        ('{"action": "Final Answer", "action_input": "abc"', "unterminated object"),
        ('{"action": "Final Answer", "action_input": {"a": [1', "unterminated object"),
        ('{"action": "Final Answer", "action_input": 12', "unterminated object"),
        ('{"action": "Final Answer", "action_input": "a\\x"}', "invalid escape '\\x' in string at offset 45"),
        ('{"action": "Final Answer", "action_input": "\\u12g4"}', "invalid \\u escape"),
        ('{"action": 3, "action_input": "x"}', '"action" value must be a string'),
        ('{"action": "Final Answer", "action_input": "x",}', "expected '\"' to start a key"),
        ('{"action": "A", "action": "B", "action_input": 1}', 'duplicate "action" key'),
        ('{"action": "Final Answer", "action_input": tru}', "invalid value 'tru'"),
        ('{"action": "Final Answer", "action_input": [1}', "mismatched '}'"),
        ('{"action": "Final Answer" "action_input": "x"}', "expected ',' or '}' after value"),
        ("{action: 'Final Answer'}", "expected '\"' to start a key at offset 1"),
        ('{"action": "Final Answer", "action_input": @}', "unexpected character '@'"),
    ],
)
def test_malformed_output_sets_error(text: str, message: str) -> None:
    for chunks in ([text], list(text)):
        ex, _ = feed_all(chunks)
        assert ex.error is not None
        assert message in ex.error


def test_error_keeps_already_emitted_text() -> None:
    ex = FinalAnswerExtractor()
    assert ex.feed('{"action": "Final Answer", "action_input": "partial ans') == "partial ans"
    assert ex.error is None
    assert ex.finish() == ""
    assert ex.error is not None and "unterminated" in ex.error
    assert ex.answer == "partial ans"


def test_error_is_set_during_feed_and_feeding_stops() -> None:
    ex = FinalAnswerExtractor()
    assert ex.feed('{"action": "Final Answer", "action_input": "ok\\q more"}') == "ok"
    assert ex.error is not None
    assert ex.feed("more text") == ""
    assert ex.finish() == ""


def test_missing_key_detected_on_close() -> None:
    ex = FinalAnswerExtractor()
    ex.feed('{"action": "Final Answer"}')
    assert ex.complete is True
    assert ex.error == 'missing "action_input" key'


def test_finish_is_idempotent_and_feed_after_finish_ignored() -> None:
    ex = FinalAnswerExtractor()
    ex.feed("hello")
    assert ex.finish() == "hello"
    assert ex.finish() == ""
    assert ex.feed(" world") == ""
    assert ex.raw == "hello"


def test_initial_state() -> None:
    ex = FinalAnswerExtractor()
    assert (ex.raw, ex.answer, ex.action, ex.action_input) == ("", "", None, None)
    assert (ex.is_final, ex.complete, ex.error) == (None, False, None)
    assert ex.feed("") == ""


def test_extraction_error_is_value_error() -> None:
    assert issubclass(ExtractionError, ValueError)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"a": "é", "b": [1, 2]}, '{"a": "é", "b": [1, 2]}'),
        ([1, "x"], '[1, "x"]'),
        (42, "42"),
        (-1.5, "-1.5"),
        (True, "true"),
        (None, ""),
    ],
)
@pytest.mark.parametrize("input_first", [False, True])
def test_non_string_final_answer(value: object, expected: str, input_first: bool) -> None:
    pairs = [("action", "Final Answer"), ("action_input", value)]
    if input_first:
        pairs.reverse()
    text = json.dumps(dict(pairs))
    ex, outs = feed_all(list(text))
    assert "".join(outs) == expected
    assert ex.action_input == value
    assert (ex.complete, ex.error) == (True, None)
