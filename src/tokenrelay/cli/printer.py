"""Rendering a run's events for a terminal: the answer on stdout, everything else on stderr.

Answer text is written and flushed per delta, exactly as it arrives. Steps (`--steps`),
raw agent output (`--verbose`) and errors go to stderr. While no answer text is streaming
(before the first token, and between a narration and what follows it), a spinner on stderr
says which step the run is in; it is erased before anything else is written.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import TextIO

from tokenrelay.cli.spinner import Spinner
from tokenrelay.events import (
    AnswerDelta,
    Event,
    Narration,
    ReasoningDelta,
    RunError,
    RunFinished,
    RunStarted,
    ToolCallFinished,
    ToolCallStarted,
    event_to_dict,
)

__all__ = ["TerminalPrinter", "drain"]

THINKING = "thinking"
CUT_OFF = (
    "tokenrelay: warning: the answer was cut off at the token limit (raise --max-tokens, or ask to continue)"
)


class TerminalPrinter:
    """Renders events for a terminal: answer on `out`, steps and errors on `err`.

    The spinner runs only in text mode without `--verbose` (raw model output on stderr is its
    own progress indicator, and `--json` is for programs)."""

    def __init__(self, out: TextIO, err: TextIO, *, steps: bool, verbose: bool, as_json: bool) -> None:
        self.out, self.err = out, err
        self.steps, self.verbose, self.as_json = steps, verbose, as_json
        self.mid_line = False  # the last answer text did not end a line
        self.spinner = Spinner(err)
        self.spinner.enabled = self.spinner.enabled and not (as_json or verbose)

    def __call__(self, event: Event) -> None:
        if self.as_json:
            self.out.write(json.dumps(event_to_dict(event), ensure_ascii=False) + "\n")
            self.out.flush()
            if isinstance(event, RunError):
                print(f"tokenrelay: error: {event.message}", file=self.err, flush=True)
            return
        if type(event) is AnswerDelta:
            self.spinner.hide()
            self.out.write(event.text)
            self.out.flush()
            self.mid_line = not event.text.endswith("\n")
        elif isinstance(event, RunStarted):
            self.mid_line = False
            self.spinner.show(THINKING)
        elif isinstance(event, ReasoningDelta):
            if self.verbose:
                self.err.write(event.text)
                self.err.flush()
        elif isinstance(event, Narration):
            # The text already shown was the model speaking before a tool call (whitespace
            # alone is not worth a marker). The agent ends it with a blank line, so the cursor
            # is at a line start again and the spinner can wait for the tool and the answer.
            if (self.steps or self.verbose) and event.text.strip():
                print(("\n" if self.mid_line else "") + "↑ narration", file=self.err, flush=True)
            if not self.mid_line:
                self.spinner.show(THINKING)
        elif isinstance(event, ToolCallStarted):
            self.spinner.relabel(f"calling {event.name}")
            if self.steps or self.verbose:
                args = event.arguments if isinstance(event.arguments, str) else json.dumps(event.arguments)
                self._step(("\n" if self.mid_line else "") + f"→ {event.name}({args})")
        elif isinstance(event, ToolCallFinished):
            self.spinner.relabel(THINKING)
            if self.steps or self.verbose:
                shown = event.result if event.error is None else f"error: {event.error}"
                self._step(f"← {event.name}: {shown}")
        elif isinstance(event, RunFinished):
            self.spinner.hide()
            self.out.write("\n")
            self.out.flush()
            if event.finish_reason == "length":
                print(CUT_OFF, file=self.err, flush=True)
        elif isinstance(event, RunError):
            self.spinner.hide()
            if self.mid_line:
                self.out.write("\n")
                self.out.flush()
            print(f"tokenrelay: error: {event.message}", file=self.err, flush=True)

    def _step(self, line: str) -> None:
        with self.spinner.cleared():
            print(line, file=self.err, flush=True)


async def drain(events: AsyncIterator[Event], sink: Callable[[Event], None]) -> int:
    """Feed every event to `sink`; 0 if the run finished, 1 if it failed."""
    status = 1
    async for event in events:
        sink(event)
        if isinstance(event, RunFinished):
            status = 0
    return status
