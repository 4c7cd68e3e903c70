"""The JSON scanner under `FinalAnswerExtractor`: parser states, string decoding, skipping of
nested values, chunk by chunk (see `agent/final_answer.py` for the invariants it keeps).

`JsonScanner` is the character level: it walks one top-level object over arbitrarily split
chunks, decodes string bodies (escapes and surrogate pairs split across chunks included) and
skips nested objects, arrays and scalars. What a key or value means - the action, its input,
the final answer - is decided by the subclass's hooks (`_begin_value`, `_end_string`,
`_end_value`, `_close`). Runs of plain string characters are copied with one regex search per
run, so scanning is O(len(chunk)) and nothing is re-parsed.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = [
    "AFTER",
    "COLON",
    "CONTAINER",
    "DONE",
    "ERROR",
    "PRE",
    "SCALAR",
    "SCALAR_START",
    "STRING",
    "T_ACTION",
    "T_INPUT",
    "T_KEY",
    "T_OTHER",
    "UNTERMINATED",
    "ExtractionError",
    "JsonScanner",
    "joined",
]


def joined(parts: list[str]) -> str:
    """`"".join(parts)`, compacting `parts` to that one string (so repeated reads are O(1))."""
    if len(parts) > 1:
        parts[:] = ["".join(parts)]
    return parts[0] if parts else ""


class ExtractionError(ValueError):
    """Describes why model output is not a valid action (text of ``.error``)."""


# Parser states.
PRE: Final = 0  # before the first "{"
OBJ_START: Final = 1  # after "{": key or "}"
KEY: Final = 2  # after ",": key
COLON: Final = 3  # after a key: ":"
VALUE: Final = 4  # after ":": a value
AFTER: Final = 5  # after a value: "," or "}"
STRING: Final = 6  # inside a string at object level (key or value)
CONTAINER: Final = 7  # skipping a nested object/array value
SCALAR: Final = 8  # skipping a number / true / false / null value
DONE: Final = 9  # top-level object closed
ERROR: Final = 10  # malformed output; everything further is ignored

# What the string / value currently being parsed is.
T_KEY: Final = 0
T_ACTION: Final = 1
T_INPUT: Final = 2
T_OTHER: Final = 3

_REPLACEMENT: Final = "\ufffd"
_STR_SPECIAL: Final = re.compile(r'["\\]')
_CONTAINER_SPECIAL: Final = re.compile(r'["{}\[\]]')
_SCALAR_END: Final = re.compile(r"[^0-9A-Za-z+\-.]")
_UNICODE_ESCAPE: Final = re.compile(r"\\u([0-9a-fA-F]{4})")
_SIMPLE_ESCAPES: Final[dict[str, str]] = {
    '"': '"',
    "\\": "\\",
    "/": "/",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
}
_HEX: Final = frozenset("0123456789abcdefABCDEF")
_WHITESPACE: Final = frozenset(" \t\n\r")
SCALAR_START: Final = frozenset("-0123456789tfnNI")
UNTERMINATED: Final[dict[int, str]] = {
    OBJ_START: "unterminated object (expected a key or '}')",
    KEY: "unterminated object (expected a key)",
    COLON: "unterminated object (expected ':' after key)",
    VALUE: "unterminated object (expected a value)",
    AFTER: "unterminated object (expected ',' or '}')",
    STRING: "unterminated string",
    CONTAINER: "unterminated object (unterminated nested value)",
    SCALAR: "unterminated object",
}


class JsonScanner:
    """The character-level JSON scanner (see the module docstring). State lives in slots."""

    __slots__ = (
        "_answer",
        "_cap_start",
        "_capture",
        "_chunks",
        "_esc",
        "_fast",
        "_finished",
        "_hi",
        "_in_str",
        "_input_done",
        "_key",
        "_offset",
        "_parts",
        "_seen_action",
        "_seen_input",
        "_stack",
        "_state",
        "_str_esc",
        "_streaming",
        "_target",
        "_value_start",
        "action",
        "action_input",
        "action_key_seen",
        "complete",
        "error",
        "is_final",
        "plain_text_fallback",
    )

    _state: int
    _offset: int
    _target: int
    _parts: list[str]
    _esc: str
    _hi: int
    _streaming: bool
    _stack: list[str]
    _in_str: bool
    _str_esc: bool
    _capture: list[str]
    _cap_start: int
    is_final: bool | None

    def _fail(self, message: str, pos: int) -> ExtractionError:
        return ExtractionError(f"model output is not valid JSON: {message} at offset {self._offset + pos}")

    def _run(self, chunk: str, out: list[str]) -> None:
        n = len(chunk)
        pos = 0
        while pos < n:
            state = self._state
            if state == STRING:
                pos = self._scan_string(chunk, pos, out)
                continue
            if state == PRE:
                i = chunk.find("{", pos)
                if i < 0:
                    break
                self._state = OBJ_START
                pos = i + 1
                continue
            if state == CONTAINER:
                pos = self._scan_container(chunk, pos, out)
                continue
            if state == SCALAR:
                m = _SCALAR_END.search(chunk, pos)
                if m is None:
                    pos = n
                    continue
                pos = m.start()
                self._end_value(chunk, pos, out)
                continue
            if state >= DONE:
                break
            while pos < n and chunk[pos] in _WHITESPACE:
                pos += 1
            if pos >= n:
                break
            c = chunk[pos]
            if state == VALUE:
                pos = self._begin_value(c, pos)
            elif state == AFTER:
                if c == ",":
                    self._state = KEY
                elif c == "}":
                    self._close()
                else:
                    raise self._fail("expected ',' or '}' after value", pos)
                pos += 1
            elif state == COLON:
                if c != ":":
                    raise self._fail("expected ':' after key", pos)
                self._state = VALUE
                pos += 1
            elif c == '"':  # OBJ_START or KEY
                self._begin_string(T_KEY)
                pos += 1
            elif c == "}" and state == OBJ_START:
                self._close()
                pos += 1
            else:
                raise self._fail("expected '\"' to start a key", pos)
        if self._state == CONTAINER or self._state == SCALAR:
            self._capture.append(chunk[self._cap_start :])
            self._cap_start = 0

    def _begin_string(self, target: int) -> None:
        self._state = STRING
        self._target = target
        self._parts = []
        self._streaming = target == T_INPUT and self.is_final is True

    def _put(self, text: str, out: list[str]) -> None:
        if self._hi:
            self._hi = 0
            text = _REPLACEMENT + text
        self._parts.append(text)
        if self._streaming:
            out.append(text)

    def _put_code(self, code: int, out: list[str]) -> None:
        if 0xD800 <= code < 0xDC00:
            if self._hi:
                self._put("", out)  # the previous one was lone: U+FFFD
            self._hi = code
        elif 0xDC00 <= code < 0xE000:
            if self._hi:
                text = chr(0x10000 + ((self._hi - 0xD800) << 10) + (code - 0xDC00))
                self._hi = 0
                self._put(text, out)
            else:
                self._put(_REPLACEMENT, out)
        else:
            self._put(chr(code), out)

    def _scan_string(self, chunk: str, pos: int, out: list[str]) -> int:
        n = len(chunk)
        parts = self._parts
        stream = self._streaming
        search = _STR_SPECIAL.search
        while pos < n:
            if self._esc:
                pos = self._resume_escape(chunk, pos, out)
                continue
            m = search(chunk, pos)
            end = n if m is None else m.start()
            if end > pos:
                text = chunk[pos:end]
                if self._hi:
                    self._put(text, out)
                else:
                    parts.append(text)
                    if stream:
                        out.append(text)
            if m is None:
                return n
            if chunk[end] == '"':
                self._end_string(out)
                return end + 1
            # A backslash: decode the escape if it is complete in this chunk.
            if end + 1 < n:
                simple = _SIMPLE_ESCAPES.get(chunk[end + 1])
                if simple is not None:
                    if self._hi:
                        self._put(simple, out)
                    else:
                        parts.append(simple)
                        if stream:
                            out.append(simple)
                    pos = end + 2
                    continue
                em = _UNICODE_ESCAPE.match(chunk, end)
                if em is not None:
                    self._put_code(int(em.group(1), 16), out)
                    pos = em.end()
                    continue
            # Split by the chunk boundary, or invalid: go character by character.
            self._esc = "\\"
            pos = end + 1
        return pos

    def _resume_escape(self, chunk: str, pos: int, out: list[str]) -> int:
        esc = self._esc
        n = len(chunk)
        while pos < n:
            c = chunk[pos]
            if len(esc) == 1:
                if c == "u":
                    esc = "\\u"
                    pos += 1
                    continue
                simple = _SIMPLE_ESCAPES.get(c)
                if simple is None:
                    raise self._fail(f"invalid escape '\\{c}' in string", pos - 1)
                self._esc = ""
                self._put(simple, out)
                return pos + 1
            if c not in _HEX:
                raise self._fail(f"invalid \\u escape '{esc}{c}' in string", pos)
            esc += c
            pos += 1
            if len(esc) == 6:
                self._esc = ""
                self._put_code(int(esc[2:], 16), out)
                return pos
        self._esc = esc
        return pos

    def _scan_container(self, chunk: str, pos: int, out: list[str]) -> int:
        n = len(chunk)
        stack = self._stack
        while pos < n:
            if self._in_str:
                if self._str_esc:
                    self._str_esc = False
                    pos += 1
                    continue
                m = _STR_SPECIAL.search(chunk, pos)
                if m is None:
                    return n
                pos = m.end()
                if m.group() == '"':
                    self._in_str = False
                else:
                    self._str_esc = True
                continue
            m = _CONTAINER_SPECIAL.search(chunk, pos)
            if m is None:
                return n
            c = m.group()
            pos = m.end()
            if c == '"':
                self._in_str = True
            elif c == "{":
                stack.append("}")
            elif c == "[":
                stack.append("]")
            elif stack.pop() != c:
                raise self._fail(f"mismatched {c!r}", pos - 1)
            elif not stack:
                self._end_value(chunk, pos, out)
                return pos
        return pos

    # -- the meaning, decided by the subclass ----------------------------------------------

    def _close(self) -> None:
        """The top-level object closed."""
        raise NotImplementedError

    def _end_string(self, out: list[str]) -> None:
        """A string at object level (a key or a value) ended."""
        raise NotImplementedError

    def _begin_value(self, c: str, pos: int) -> int:
        """A value starts with `c` at `pos`; return where scanning goes on."""
        raise NotImplementedError

    def _end_value(self, chunk: str, end: int, out: list[str]) -> None:
        """A non-string value ended at `chunk[end]` (exclusive)."""
        raise NotImplementedError
