"""Parse SSE lines into (id, event, data) for tests that read raw event streams."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

__all__ = ["parse_sse"]


def parse_sse(lines: Iterator[str]) -> Iterator[tuple[int | None, str, dict[str, Any]]]:
    """(id, event, data) from an SSE line iterator; comments (keep-alives) are skipped."""
    event_id: int | None = None
    name = "message"
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                yield event_id, name, json.loads("\n".join(data))
            event_id, name, data = None, "message", []
        elif line.startswith(":"):
            continue
        elif line.startswith("id:"):
            event_id = int(line[3:].strip())
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip(" "))
