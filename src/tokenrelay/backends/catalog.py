"""The catalogue of recommended local models: aliases for `hf:<alias>` and `tokenrelay models`.

Data only (no imports from the rest of the package), so that `backends.hf` can resolve an
alias and `tokenrelay.models` can list the cache without the two importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["DEFAULT_ALIAS", "ModelInfo", "recommended", "resolve_alias"]

DEFAULT_ALIAS = "smollm2-135m"


@dataclass(frozen=True, slots=True)
class ModelInfo:
    alias: str
    model: str
    size: int | None
    languages: tuple[str, ...]
    note: str
    path: Path | None = None


# Repository and file names checked on huggingface.co (sizes as the Hub lists them).
_RECOMMENDED = (
    ModelInfo(
        alias=DEFAULT_ALIAS,
        model="llamacpp",
        size=100_000_000,
        languages=("en",),
        note="the default: a tiny English-only demo model, installed with tokenrelay, runs offline",
    ),
    ModelInfo(
        alias="qwen2.5-1.5b",
        model="hf:bartowski/Qwen2.5-1.5B-Instruct-GGUF/Qwen2.5-1.5B-Instruct-Q4_K_M.gguf",
        size=986_000_000,
        languages=("en", "ja", "zh", "ko", "fr", "de", "es"),
        note="Qwen2.5 1.5B Instruct (Apache-2.0): Japanese and English document Q&A on a laptop CPU",
    ),
    ModelInfo(
        alias="qwen2.5-3b",
        model="hf:lmstudio-community/Qwen2.5-3B-Instruct-GGUF/Qwen2.5-3B-Instruct-Q4_K_M.gguf",
        size=1_930_000_000,
        languages=("en", "ja", "zh", "ko", "fr", "de", "es"),
        note="Qwen2.5 3B Instruct (Qwen research licence: non-commercial): better answers, half the speed",
    ),
    ModelInfo(
        alias="smollm2-1.7b",
        model="hf:HuggingFaceTB/SmolLM2-1.7B-Instruct-GGUF/smollm2-1.7b-instruct-q4_k_m.gguf",
        size=1_060_000_000,
        languages=("en",),
        note="SmolLM2 1.7B Instruct (Apache-2.0): the default's big sibling, English only",
    ),
)


def recommended() -> list[ModelInfo]:
    """Models worth trying, smallest first within each language group (the default first)."""
    return list(_RECOMMENDED)


def resolve_alias(name: str) -> ModelInfo | None:
    """The recommended model called `name` (case-insensitive), if any."""
    name = name.strip().lower()
    return next((m for m in _RECOMMENDED if m.alias == name), None)
