"""Line editing and history for `tokenrelay chat`, where the platform has `readline`.

Importing `readline` is what gives `input()` line editing and arrow-key history. It is
enabled only when standard input is a terminal (piped lines are not history), and a Python
without `readline` (Windows, some minimal builds) simply chats without it. The history file
holds what the user typed, so it is written readable by its owner only.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

__all__ = ["HISTORY_LENGTH", "enable_history"]

HISTORY_LENGTH = 1000


def enable_history(path: Path) -> Callable[[], None] | None:
    """Load the history from `path`; return the function that saves it (call it once, at the
    end), or None when there is no line editing to give."""
    if sys.stdin is None or not sys.stdin.isatty():
        return None
    try:
        import readline
    except ImportError:
        return None
    try:
        readline.read_history_file(path)
    except OSError:  # none yet, or unreadable: start empty rather than refuse to chat
        pass
    readline.set_history_length(HISTORY_LENGTH)

    def save() -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch(mode=0o600, exist_ok=True)
            readline.write_history_file(path)
        except OSError as exc:
            print(f"tokenrelay: warning: chat history not saved to {path}: {exc}", file=sys.stderr)

    return save
