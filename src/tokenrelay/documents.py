"""Documents attached to a session: text, Markdown or Jupyter notebooks, fitted to the model.

`extract_text` turns an upload into plain text (a notebook becomes its Markdown cells and
code cells in order, outputs dropped). `fit_document` keeps what fits the model's context
window and says plainly what was left out: no silent truncation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tokenrelay.backends.base import Backend
from tokenrelay.memory.base import Document

__all__ = ["FittedDocument", "extract_text", "fit_document"]

SUPPORTED = (".txt", ".md", ".markdown", ".ipynb", ".rst", ".py", ".json", ".csv", ".log")


def extract_text(name: str, content: str) -> str:
    """Plain text of an uploaded file. Raises ValueError with a user-readable message."""
    lowered = name.lower()
    if not lowered.endswith(SUPPORTED) and "." in lowered:
        raise ValueError(
            f"{name}: unsupported file type; attach text, Markdown or a Jupyter notebook (.ipynb)"
        )
    if lowered.endswith(".ipynb"):
        return _notebook_text(name, content)
    return content


def _notebook_text(name: str, content: str) -> str:
    def invalid(problem: str) -> ValueError:
        return ValueError(f"{name} is not a valid Jupyter notebook: {problem}")

    try:
        notebook: Any = json.loads(content)
    except RecursionError:
        raise invalid("its JSON is nested too deeply") from None
    except ValueError as exc:
        raise invalid(f"it is not JSON ({exc})") from None
    if not isinstance(notebook, dict) or "cells" not in notebook:
        raise invalid("expected a JSON object with 'cells'")
    cells = notebook["cells"]
    if not isinstance(cells, list):
        raise invalid(f"'cells' must be a list, not {_json_type(cells)}")
    parts: list[str] = []
    for number, cell in enumerate(cells, 1):
        if not isinstance(cell, dict):
            raise invalid(f"cell {number} must be an object, not {_json_type(cell)}")
        source = cell.get("source", "")
        if isinstance(source, list) and all(isinstance(line, str) for line in source):
            text = "".join(source)
        elif isinstance(source, str):
            text = source
        else:
            raise invalid(f"cell {number}: 'source' must be text or a list of text lines")
        if not text.strip():
            continue
        if cell.get("cell_type") == "code":
            parts.append(f"```python\n{text.rstrip()}\n```")
        else:
            parts.append(text.rstrip())
    return "\n\n".join(parts)


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


@dataclass(frozen=True, kw_only=True)
class FittedDocument:
    name: str
    text: str  # what the model will see
    total_chars: int
    kept_chars: int
    total_tokens: int
    budget_tokens: int

    @property
    def truncated(self) -> bool:
        return self.kept_chars < self.total_chars

    @classmethod
    def stored(cls, doc: Document) -> FittedDocument:
        """The fit of a stored document (whole, when the store did not record a cut)."""
        kept = len(doc.text)
        return cls(
            name=doc.name,
            text=doc.text,
            total_chars=doc.total_chars if doc.total_chars is not None else kept,
            kept_chars=kept,
            total_tokens=doc.total_tokens or 0,
            budget_tokens=doc.budget_tokens or 0,
        )

    def notice(self) -> str | None:
        """What was left out, in words, or None when the whole document fits."""
        if not self.truncated:
            return None
        percent = 100 * self.kept_chars // max(1, self.total_chars)
        return (
            f"{self.name} is about {self.total_tokens} tokens, but only {self.budget_tokens} fit the model's "
            f"context window: the model sees the first {self.kept_chars} of {self.total_chars} characters "
            f"({percent}%); everything after that was left out."
        )


def fit_document(
    name: str, text: str, backend: Backend, *, max_tokens: int, reserve_tokens: int = 1024
) -> FittedDocument:
    """Keep the longest prefix of `text` (cut at a paragraph or line end) that fits the
    context window minus the answer's `max_tokens` and `reserve_tokens` for the prompt and
    the conversation."""
    window = backend.context_window or 8192
    budget = max(0, window - max_tokens - reserve_tokens)
    total_tokens = backend.count_tokens(text) if text else 0
    kept = text
    if total_tokens > budget:
        # proportional first guess, then shrink until it fits
        kept = text[: max(0, int(len(text) * budget / max(1, total_tokens)))]
        while kept and backend.count_tokens(kept) > budget:
            kept = kept[: int(len(kept) * 0.9)]
        cut = max(kept.rfind("\n\n"), kept.rfind("\n"))
        if cut > len(kept) // 2:
            kept = kept[:cut]
    return FittedDocument(
        name=name,
        text=kept,
        total_chars=len(text),
        kept_chars=len(kept),
        total_tokens=total_tokens,
        budget_tokens=budget,
    )
