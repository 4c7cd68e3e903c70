"""`tokenrelay.models`: the recommended list, the cache listing and the demo notice."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tokenrelay.backends.hf import parse_hf
from tokenrelay.backends.llamacpp import DEFAULT_MODEL_FILE, default_model_path
from tokenrelay.models import (
    ModelInfo,
    cached,
    demo_notice,
    english_only_reply,
    is_demo_model,
    recommended,
    resolve_alias,
)


def test_recommended_models_are_well_formed() -> None:
    models = recommended()
    assert models[0].alias == "smollm2-135m" and models[0].model == "llamacpp"
    assert len({m.alias for m in models}) == len(models)
    for m in models:
        assert isinstance(m, ModelInfo) and m.size and m.size > 0 and m.languages and m.note
        assert m.path is None
        if m.model.startswith("hf:"):
            ref = parse_hf(m.alias)  # every alias resolves to a GGUF file on the Hub
            assert ref.model == m.model and ref.filename.lower().endswith(".gguf")
    assert any("ja" in m.languages for m in models)
    with pytest.raises(AttributeError):
        models[0].alias = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("model", "demo"),
    [
        ("llamacpp", True),
        (" LlamaCpp ", True),
        (f"llamacpp:/somewhere/{DEFAULT_MODEL_FILE}", True),
        ("llamacpp:/models/qwen.gguf", False),
        ("hf:smollm2-135m", True),
        ("hf:qwen2.5-1.5b", False),
        ("openai:gpt-4o-mini", False),
        ("scripted:hi", False),
    ],
)
def test_demo_notice(model: str, demo: bool) -> None:
    assert is_demo_model(model) is demo
    notice = demo_notice(model)
    if demo:
        assert notice is not None and "\n" not in notice
        assert (
            "English-only" in notice and "--model hf:qwen2.5-1.5b" in notice and "--model openai:" in notice
        )
    else:
        assert notice is None


def test_english_only_reply_says_how_to_switch_in_both_languages() -> None:
    reply = english_only_reply()
    assert "only understands English" in reply and "--model hf:qwen2.5-1.5b" in reply
    assert "英語しか" in reply


def test_resolve_alias() -> None:
    assert resolve_alias("QWEN2.5-3B") is not None
    assert resolve_alias("nope") is None


def test_cached_lists_the_default_and_gguf_files_in_the_hub_cache(tmp_path: Path) -> None:
    repo = tmp_path / "models--bartowski--Qwen2.5-1.5B-Instruct-GGUF"
    blob = repo / "blobs" / ("a" * 64)
    blob.parent.mkdir(parents=True)
    blob.write_bytes(b"GGUF" + b"\0" * 1000)
    snapshot = repo / "snapshots" / ("c" * 40)
    snapshot.mkdir(parents=True)
    os.symlink(blob, snapshot / "Qwen2.5-1.5B-Instruct-Q4_K_M.gguf")
    os.symlink(blob, snapshot / "README.md")  # not a model
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("c" * 40)

    models = cached(tmp_path)
    assert [m.model for m in models] == [
        "llamacpp",
        "hf:bartowski/Qwen2.5-1.5B-Instruct-GGUF/Qwen2.5-1.5B-Instruct-Q4_K_M.gguf",
    ]
    default, qwen = models
    assert default.path == default_model_path() and default.size == default_model_path().stat().st_size
    assert qwen.alias == "qwen2.5-1.5b" and qwen.size == 1004 and "ja" in qwen.languages
    assert qwen.path is not None and qwen.path.name == "Qwen2.5-1.5B-Instruct-Q4_K_M.gguf"


def test_cached_without_a_hub_cache(tmp_path: Path) -> None:
    assert [m.model for m in cached(tmp_path / "missing")] == ["llamacpp"]
