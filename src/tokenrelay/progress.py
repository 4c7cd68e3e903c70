"""One-line progress notes on stderr where users wait (model loading, downloads).

Notes go to stderr, never stdout (stdout carries answers). `TOKENRELAY_PROGRESS=0` turns them
off; download progress bars are huggingface_hub's own (`HF_HUB_DISABLE_PROGRESS_BARS=1`).
"""

from __future__ import annotations

import os
import sys

__all__ = ["enabled", "human_size", "note"]


def enabled() -> bool:
    return os.environ.get("TOKENRELAY_PROGRESS", "1").strip().lower() not in ("0", "false", "no", "off")


def note(message: str) -> None:
    """Print `tokenrelay: <message>` on stderr (when progress notes are on)."""
    if enabled():
        try:
            print(f"tokenrelay: {message}", file=sys.stderr, flush=True)
        except (OSError, ValueError):  # stderr closed (daemonised server): progress is optional
            pass


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit in ("B", "KB") else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"  # pragma: no cover - unreachable
