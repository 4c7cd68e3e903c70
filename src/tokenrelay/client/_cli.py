"""`tokenrelay stream`: the answer on stdout as it arrives, resumed by itself after a drop."""

from __future__ import annotations

import os
import sys
from typing import TextIO

from tokenrelay.client._core import DEFAULT_TIMEOUT, RECONNECT, Reconnect
from tokenrelay.client._errors import TokenrelayClientError
from tokenrelay.client._sync import stream_text

__all__ = ["stream_cli"]


def _write(out: TextIO, text: str) -> None:
    try:
        out.write(text)
    except UnicodeEncodeError:  # a terminal that cannot show every character
        encoding = getattr(out, "encoding", None) or "ascii"
        out.write(text.encode(encoding, "replace").decode(encoding, "replace"))
    out.flush()


def stream_cli(
    url: str,
    prompt: str,
    *,
    session_id: str | None = None,
    api_key: str | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
    reconnect: Reconnect | None = RECONNECT,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """`tokenrelay stream`: print the answer as it arrives (flushed per piece) and a newline;
    a dropped connection is resumed without a gap or a repeat. Errors are one line on stderr
    and exit status 1 (130 for Ctrl-C, which also cancels the run). `prompt` '-' reads
    standard input."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    wrote = False

    def fail(message: str, status: int = 1) -> int:
        if wrote:
            _write(out, "\n")
        print(f"tokenrelay: {message}", file=err, flush=True)
        return status

    try:
        if prompt == "-":
            prompt = sys.stdin.read()
        if not prompt.strip():
            return fail("error: the prompt is empty")
        with stream_text(
            url, prompt, session_id=session_id, api_key=api_key, timeout=timeout, reconnect=reconnect
        ) as stream:
            for piece in stream:
                _write(out, piece)
                wrote = True
        _write(out, "\n")
        return 0
    except TokenrelayClientError as exc:
        return fail(f"error: {exc}")
    except KeyboardInterrupt:
        return fail("interrupted", 130)
    except BrokenPipeError:
        # the reader went away (`| head`): stop quietly, and keep Python from complaining at exit
        if out is sys.stdout:
            try:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
            except (OSError, ValueError):
                pass
        return 1
