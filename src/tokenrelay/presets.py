"""Preset questions shown as one-click buttons for an attached document.

The defaults are the seed's: a summary (要約), the system structure (システム構成), the processing
flow as a Mermaid flowchart (処理フローをmermaidで) and as a Mermaid sequence diagram (シーケンス図).
A server can replace them with a JSON file (`TOKENRELAY_PRESETS_FILE`): a list of objects
`{"id", "label": {"en", "ja"}, "question": {"en", "ja"}}`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenrelay.errors import ConfigError

__all__ = ["DEFAULT_PRESETS", "load_presets"]

DEFAULT_PRESETS: list[dict[str, Any]] = [
    {
        "id": "summary",
        "label": {"ja": "要約", "en": "Summary"},
        "question": {"ja": "このドキュメントを要約してください。", "en": "Summarize this document."},
    },
    {
        "id": "structure",
        "label": {"ja": "システム構成", "en": "System structure"},
        "question": {
            "ja": "このドキュメントのシステム構成は？",
            "en": "What is the system structure described in this document?",
        },
    },
    {
        "id": "flowchart",
        "label": {"ja": "処理フローをmermaidで", "en": "Flow as Mermaid"},
        "question": {
            "ja": "処理フローをmermaidのフローチャートで示してください。",
            "en": "Show the processing flow as a Mermaid flowchart.",
        },
    },
    {
        "id": "sequence",
        "label": {"ja": "シーケンス図", "en": "Sequence diagram"},
        "question": {
            "ja": "処理フローをmermaidでシーケンス図にしてください。",
            "en": "Draw the processing flow as a Mermaid sequence diagram.",
        },
    },
]


def load_presets(path: str | None) -> list[dict[str, Any]]:
    if not path:
        return DEFAULT_PRESETS
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read presets from {path}: {exc}") from None
    if not isinstance(data, list) or not all(
        isinstance(p, dict) and {"id", "label", "question"} <= p.keys() for p in data
    ):
        raise ConfigError(f"{path}: presets must be a list of {{id, label, question}} objects")
    return data
