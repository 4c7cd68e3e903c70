"""`tokenrelay models` and the first-run notice for the tiny default model."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tokenrelay.cli.models import notice_once


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_models_lists_cached_and_recommended() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tokenrelay.cli", "models"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("cached:\n  llamacpp")
    assert "recommended:" in done.stdout and "hf:qwen2.5-1.5b" in done.stdout and "ja" in done.stdout


def test_models_json_gives_a_usable_model_name() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tokenrelay.cli", "models", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert {r["group"] for r in rows} == {"cached", "recommended"}
    japanese = [r for r in rows if "ja" in r["languages"]]
    assert japanese and all(r["name"].startswith("hf:") and r["model"].endswith(".gguf") for r in japanese)


def test_the_demo_notice_is_said_once_in_a_terminal(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    first, second, piped = Terminal(), Terminal(), io.StringIO()
    notice_once("llamacpp", piped)
    assert piped.getvalue() == ""  # scripts and pipes never get it
    notice_once("llamacpp", first)
    notice_once("llamacpp", second)
    assert "English" in first.getvalue() and "--model" in first.getvalue()
    assert first.getvalue().count("\n") == 1 and second.getvalue() == ""


def test_no_notice_for_a_capable_model(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    out = Terminal()
    notice_once("openai:gpt-4o-mini", out)
    assert out.getvalue() == ""
