"""Streaming prose out of JSON-protocol model output, holding back only what could start an action.

A model asked for `{"action": ..., "action_input": ...}` blobs often writes prose instead
(the whole answer, or a few words before an action block). `ProseStreamer` lets that prose
stream as it is written, and hands over to a `FinalAnswerExtractor` the moment an action
block is recognized. Invariants, for any split of the output into chunks:

* Text that could still begin an action block is held back, never emitted: a `{` until the
  parser knows whether it opens an object with an `action` (or fails to), a run of backticks
  until it is known not to be a fence, and a "```" / "```json" fence line until the next
  non-blank character says whether a `{` follows it. Nothing of the JSON scaffolding of a
  recognized action block (fence, braces, keys, quotes) ever reaches the prose.
* An output with no action block: the concatenation of everything emitted (`feed` returns
  plus `finish()`) equals `raw` exactly, byte for byte, as on every other path (leading
  whitespace is held until something else arrives, so a blank output emits nothing and is
  reported as `error`).
* An output with an action block: a `{` opens an action block once a key named `action` or
  `action_input` has been parsed in it (even if the block later turns out malformed: that is
  a failed action, reported to the model, not prose). `extractor` is set by the `feed` call
  that recognized it, `action_text` holds the answer text that call decoded (for a final
  answer), `prefix` the raw text before the block, and from then on the caller feeds
  `extractor` directly (the per-token hot path stays the extractor's own; the whole raw
  output is `prefix + extractor.raw`). What was emitted before is prose the model wrote
  before acting: the agent re-labels it as narration.
* A `{` that turns out not to start an action (`{x}`, `\\frac{a}{b}`, an object without an
  `action` key) is released as prose, and the text after it is scanned again.

Cost: O(len(chunk)) per chunk while no brace is pending; a candidate object is parsed once,
incrementally, and re-scanned once if it fails.
"""

from __future__ import annotations

import re
from typing import Final

from tokenrelay.agent.final_answer import FinalAnswerExtractor
from tokenrelay.agent.json_scan import joined

__all__ = ["ProseStreamer"]

_SPECIAL: Final = re.compile(r"[{`]")
_BLANK: Final = frozenset(" \t\r\n")
#: a fence line longer than this without a newline is not the start of a JSON fence
_MAX_FENCE_LINE: Final = 32


class ProseStreamer:
    """Splits JSON-protocol output into streamed prose and, at most, one action block.

    Attributes:
        extractor: the `FinalAnswerExtractor` of the recognized action block, else None.
        action_text: answer text decoded by the `feed` call that recognized the block.
        prefix: the raw text before the recognized block (its fence, prose).
        error: set by `finish()` when the output was blank (there is no answer to give).
    """

    __slots__ = (
        "_brace",
        "_cand",
        "_cand_text",
        "_chunks",
        "_started",
        "_tail",
        "_ws",
        "action_text",
        "error",
        "extractor",
        "prefix",
    )

    def __init__(self) -> None:
        self.extractor: FinalAnswerExtractor | None = None
        self.action_text = ""
        self.prefix = ""
        self.error: str | None = None
        self._chunks: list[str] = []
        self._tail = ""  # unscanned text: backticks / a fence line that may start an action block
        self._cand: FinalAnswerExtractor | None = None  # parsing a `{` that may start an action
        self._cand_text: list[str] = []  # the held candidate's text (its fence, then from `{`)
        self._brace = 0  # offset of the candidate's `{` in its held text
        self._ws = ""  # leading whitespace held back
        self._started = False  # emitted anything yet

    @property
    def raw(self) -> str:
        """Everything fed so far."""
        return joined(self._chunks)

    def feed(self, chunk: str) -> str:
        """Consume a chunk; return the prose it released (may be "")."""
        self._chunks.append(chunk)
        if self.extractor is not None or not chunk:
            return ""
        out: list[str] = []
        self._scan(chunk, out)
        return "".join(out)

    def finish(self) -> str:
        """End of output: release what was held for an action block that never came."""
        out: list[str] = []
        while self.extractor is None and (self._cand is not None or self._tail):
            if self._cand is not None:
                self._cand.finish()
                self._release_candidate(out)
            else:
                tail, self._tail = self._tail, ""
                self._emit(tail, out)
        self._ws = ""
        if self.extractor is None and not self._started:
            self.error = "model output is empty"
        return "".join(out)

    # ------------------------------------------------------------------ internals

    def _emit(self, text: str, out: list[str]) -> None:
        if not self._started:
            if not text.strip():
                self._ws += text  # leading whitespace: held until something else comes
                return
            self._started = True
            text, self._ws = self._ws + text, ""
        out.append(text)

    def _release_candidate(self, out: list[str]) -> None:
        """The held `{` does not start an action: it is prose; scan what followed it again."""
        held = "".join(self._cand_text)
        self._cand = None
        self._cand_text = []
        self._emit(held[: self._brace + 1], out)
        self._scan(held[self._brace + 1 :], out)

    def _start_candidate(self, held_prefix: str) -> None:
        self._cand = FinalAnswerExtractor(plain_text_fallback=False)
        self._brace = len(held_prefix)
        self._cand_text = [held_prefix] if held_prefix else []

    def _scan(self, text: str, out: list[str]) -> None:
        while text:
            cand = self._cand
            if cand is not None:
                decoded = cand.feed(text)
                self._cand_text.append(text)
                if cand.action_key_seen:  # an action block (perhaps a malformed one)
                    self.extractor = cand
                    self._cand = None
                    self.action_text = decoded
                    raw = self.raw
                    self.prefix = raw[: len(raw) - len(cand.raw)]
                    return
                if cand.error is None:
                    return  # still undecided: keep holding
                held = "".join(self._cand_text)
                self._cand = None
                self._cand_text = []
                self._emit(held[: self._brace + 1], out)
                text = held[self._brace + 1 :]
                continue
            if self._tail:
                text = self._tail + text
                self._tail = ""
            m = _SPECIAL.search(text)
            if m is None:
                self._emit(text, out)
                return
            i = m.start()
            if i:
                self._emit(text[:i], out)
            if text[i] == "{":
                self._start_candidate("")
                text = text[i:]
                continue
            n = len(text)
            j = i
            while j < n and text[j] == "`":
                j += 1
            if j == n:  # a run of backticks at the end may still grow into a fence
                self._tail = text[i:]
                return
            if j - i < 3:
                self._emit(text[i:j], out)
                text = text[j:]
                continue
            nl = text.find("\n", j)
            if nl < 0:
                if n - j <= _MAX_FENCE_LINE:
                    self._tail = text[i:]  # the fence's info string is not complete yet
                    return
                self._emit(text[i:j], out)
                text = text[j:]
                continue
            if text[j:nl].strip().lower() not in ("", "json"):
                self._emit(text[i : nl + 1], out)  # a code block of another language
                text = text[nl + 1 :]
                continue
            k = nl + 1
            while k < n and text[k] in _BLANK:
                k += 1
            if k == n:
                self._tail = text[i:]
                return
            if text[k] != "{":
                self._emit(text[i:k], out)
                text = text[k:]
                continue
            self._start_candidate(text[i:k])  # a fenced candidate: the fence is held with it
            text = text[k:]
