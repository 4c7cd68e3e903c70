"""Incremental extraction of the final answer from "JSON action" agent output.

The conversational-chat agent format (LangChain style) has the model write,
optionally after prose and/or inside a Markdown code fence::

    {"action": "Final Answer", "action_input": "the answer text"}

or a tool call such as ``{"action": "Calculator", "action_input": "sqrt(71)"}``.
:class:`FinalAnswerExtractor` consumes the raw model output in arbitrary chunks
(tokens) and returns, from each :meth:`FinalAnswerExtractor.feed` call, exactly
the characters of the final answer that the chunk completed.

Parsing is a small state machine over the new characters only (the character
level is :class:`~tokenrelay.agent.json_scan.JsonScanner`): runs of plain string
characters are copied with one regex search per run, so ``feed`` is O(len(chunk))
and nothing is ever re-parsed.

Invariants:

* Everything before the first ``{`` (prose, a ```json fence line) and
  everything after the top-level object closes is ignored.
* For a final-answer action (``action`` normalized by ``strip().casefold()`` is
  in :data:`FINAL_ANSWER_ACTIONS`) the concatenation of all ``feed`` returns
  plus ``finish()`` equals the decoded ``action_input`` string exactly, for any
  split of the output into chunks.  For a tool action nothing is ever emitted.
* A character is emitted by the ``feed`` call whose chunk completes it: never a
  partial escape sequence and never half of a UTF-16 surrogate pair.  A lone
  surrogate escape decodes to U+FFFD.
* If ``action_input`` precedes ``action``, its decoded text is buffered and
  returned by the ``feed`` call that completes the ``action`` string (only if
  the action is final).
* A non-string final ``action_input`` is emitted once, when both it and the
  action are known: dicts/lists as ``json.dumps(value, ensure_ascii=False)``,
  numbers as ``str(value)``, booleans as ``true``/``false``, ``null`` as "".
* ``feed`` and ``finish`` never raise on bad model output; problems are
  reported in ``.error`` (a human-readable text suitable as feedback to the
  model) and parsing stops.  Text already emitted is never retracted.
* Raw control characters inside strings are accepted (like ``json.loads(...,
  strict=False)``); invalid escape sequences are errors.
* Plain text fallback: if no ``{`` was ever seen, ``finish()`` returns the
  stripped raw text as the final answer (``.error`` is set instead when the
  fallback is disabled or the output is blank); ``complete`` stays False.

Performance notes: while streaming a final answer, a chunk with no ``"`` and
no ``\\`` is returned as is; a short chunk made of plain characters and complete
escapes is decoded once and memoized in a small module-level cache shared by
all extractors.  Everything else goes through the state machine.  ``raw`` and
``answer`` are joined lazily on access.
"""

from __future__ import annotations

import json
import re
from typing import Final

from tokenrelay.agent.json_scan import (
    AFTER,
    COLON,
    CONTAINER,
    DONE,
    ERROR,
    PRE,
    SCALAR,
    SCALAR_START,
    T_ACTION,
    T_INPUT,
    T_KEY,
    T_OTHER,
    UNTERMINATED,
    ExtractionError,
    JsonScanner,
    joined,
)

__all__ = ["FINAL_ANSWER_ACTIONS", "ExtractionError", "FinalAnswerExtractor"]

FINAL_ANSWER_ACTIONS: Final[frozenset[str]] = frozenset({"final answer", "final_answer", "finalanswer"})


# A chunk made only of plain string characters and complete escapes (no
# surrogate halves): it decodes the same way whatever came before it.
_SELF_CONTAINED: Final = re.compile(r'(?:[^"\\]|\\["\\/bfnrt]|\\u(?![dD][89a-fA-F])[0-9a-fA-F]{4})*')
_DECODED_CACHE_MAX: Final = 4096
_DECODED_CHUNK_MAX: Final = 32
# Shared cache of decoded self-contained chunks ("" for chunks that are not):
# token vocabularies are finite, so chunks such as '\\n\\n' or '.\\"' repeat
# across streams.
_decoded_cache: dict[str, str] = {}


def _decode_self_contained(chunk: str) -> str:
    """Decode a chunk of string body containing escapes; "" if not self-contained."""
    if len(chunk) > _DECODED_CHUNK_MAX:
        return ""
    text: str = ""
    if _SELF_CONTAINED.fullmatch(chunk) is not None:
        text = json.loads('"' + chunk + '"', strict=False)
    if len(_decoded_cache) >= _DECODED_CACHE_MAX:
        _decoded_cache.clear()
    _decoded_cache[chunk] = text
    return text


def _format_value(value: object) -> str:
    """Render a non-string final ``action_input`` as answer text."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(value, ensure_ascii=False)


class FinalAnswerExtractor(JsonScanner):
    """Streams the final answer out of JSON-action model output, chunk by chunk.

    Attributes:
        action: the action name once its string is complete, else None.
        action_input: the parsed action_input value once complete, else None.
        is_final: None until the action is known; then whether it is final.
        action_key_seen: whether a key named "action" or "action_input" has been parsed (the
            output is an attempt at an action, even if it later turns out malformed).
        complete: True once the top-level JSON object has closed.
        error: why the output is not a valid action, else None.
    """

    __slots__ = ()

    def __init__(self, *, plain_text_fallback: bool = True) -> None:
        self.plain_text_fallback = plain_text_fallback
        self.action: str | None = None
        self.action_input: object = None
        self.is_final: bool | None = None
        self.action_key_seen = False
        self.complete = False
        self.error: str | None = None
        self._chunks: list[str] = []  # raw chunks (joined lazily by .raw)
        self._answer: list[str] = []  # emitted pieces (joined lazily by .answer)
        self._state = PRE
        self._offset = 0  # raw chars consumed before the current chunk
        self._finished = False
        # String decoding.
        self._target = T_KEY
        self._parts: list[str] = []  # decoded pieces of the current string
        self._esc = ""  # incomplete escape sequence split by a chunk boundary
        self._hi = 0  # pending high surrogate (waiting for its low half), or 0
        self._streaming = False  # current string is a final answer: emit it
        self._fast = False  # _streaming and no pending escape / surrogate
        # Object level.
        self._key = ""
        self._seen_action = False
        self._seen_input = False
        self._input_done = False
        # Non-string value skipping / capture.
        self._stack: list[str] = []  # expected closing brackets
        self._in_str = False
        self._str_esc = False
        self._capture: list[str] = []
        self._cap_start = 0
        self._value_start = 0

    # ------------------------------------------------------------------ API

    @property
    def raw(self) -> str:
        """All raw text fed so far."""
        return joined(self._chunks)

    @property
    def answer(self) -> str:
        """All answer text emitted so far (feed and finish returns, joined)."""
        return joined(self._answer)

    def feed(self, chunk: str) -> str:
        """Consume the next chunk of raw model output; return answer text newly decoded (may be "")."""
        # Hot path: a piece of a streaming final answer that cannot end it.
        if self._fast:
            if "\\" in chunk:
                text = _decoded_cache.get(chunk)
                if text is None:
                    text = _decode_self_contained(chunk)
            elif '"' in chunk:
                text = ""
            else:
                text = chunk
            if text:
                self._chunks.append(chunk)
                self._offset += len(chunk)
                self._parts.append(text)
                self._answer.append(text)
                return text
        if self._finished or not chunk:
            return ""
        self._chunks.append(chunk)
        if self._state >= DONE:
            self._offset += len(chunk)
            return ""
        out: list[str] = []
        try:
            self._run(chunk, out)
        except ExtractionError as exc:
            self.error = str(exc)
            self._state = ERROR
            self._streaming = False
        self._fast = self._streaming and not self._esc and not self._hi
        self._offset += len(chunk)
        if not out:
            return ""
        text = out[0] if len(out) == 1 else "".join(out)
        self._answer.append(text)
        return text

    def finish(self) -> str:
        """End of model output. Return any answer text not yet emitted.

        (e.g. buffered because action_input came before action, or the plain
        text fallback). Sets .error if the output was not a complete action
        object. Idempotent; later ``feed`` calls are ignored.
        """
        if self._finished:
            return ""
        self._finished = True
        self._fast = False
        state = self._state
        if state == PRE:
            text = self.raw.strip()
            if not self.plain_text_fallback:
                self.error = "model output contains no JSON object"
                return ""
            if not text:
                self.error = "model output is empty"
                return ""
            self.action = "Final Answer"
            self.is_final = True
            self.action_input = text
            self._answer.append(text)
            return text
        if state < DONE:
            self.error = "model output is not valid JSON: " + UNTERMINATED[state]
            self._state = ERROR
            self._streaming = False
        return ""

    # ------------------------------------------------------------ the meaning

    def _close(self) -> None:
        self.complete = True
        self._state = DONE
        if not self._seen_action:
            raise ExtractionError('missing "action" key')
        if not self._input_done:
            raise ExtractionError('missing "action_input" key')

    def _end_string(self, out: list[str]) -> None:
        if self._hi:
            self._put("", out)
        parts = self._parts
        text = parts[0] if len(parts) == 1 else "".join(parts)
        self._parts = []
        self._streaming = False
        target = self._target
        if target == T_KEY:
            self._key = text
            if text == "action" or text == "action_input":
                self.action_key_seen = True
            self._state = COLON
            return
        self._state = AFTER
        if target == T_ACTION:
            self.action = text
            final = text.strip().casefold() in FINAL_ANSWER_ACTIONS
            self.is_final = final
            if final and self._input_done:
                out.append(_format_value(self.action_input))
        elif target == T_INPUT:
            self.action_input = text
            self._input_done = True

    def _begin_value(self, c: str, pos: int) -> int:
        key = self._key
        if key == "action":
            if self._seen_action:
                raise self._fail('duplicate "action" key', pos)
            self._seen_action = True
            if c != '"':
                raise self._fail('"action" value must be a string', pos)
            self._begin_string(T_ACTION)
            return pos + 1
        target = T_OTHER
        if key == "action_input":
            if self._seen_input:
                raise self._fail('duplicate "action_input" key', pos)
            self._seen_input = True
            target = T_INPUT
        if c == '"':
            self._begin_string(target)
            return pos + 1
        self._target = target
        self._capture = []
        self._cap_start = pos
        self._value_start = self._offset + pos
        if c == "{" or c == "[":
            self._state = CONTAINER
            self._stack = ["}" if c == "{" else "]"]
            self._in_str = False
            self._str_esc = False
            return pos + 1
        if c in SCALAR_START:
            self._state = SCALAR
            return pos
        raise self._fail(f"unexpected character {c!r} where a value was expected", pos)

    def _end_value(self, chunk: str, end: int, out: list[str]) -> None:
        """Finish a non-string value ending at ``chunk[end]`` (exclusive)."""
        self._capture.append(chunk[self._cap_start : end])
        text = "".join(self._capture)
        self._capture = []
        try:
            value: object = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise ExtractionError(
                f"model output is not valid JSON: invalid value {text[:40]!r} "
                f"at offset {self._value_start} ({exc})"
            ) from None
        self._state = AFTER
        if self._target == T_INPUT:
            self.action_input = value
            self._input_done = True
            if self.is_final:
                out.append(_format_value(value))
