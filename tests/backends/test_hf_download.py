"""`--model hf:OWNER/REPO/FILE.gguf` end to end: the real CLI, the real huggingface_hub download
code, against a local fake of the Hub's endpoints (tests/fake_hub.py) serving the default
SmolLM2 GGUF file, then an answer streamed from the downloaded copy."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from fake_hub import FakeHub
from tokenrelay.backends.hf import parse_hf
from tokenrelay.backends.llamacpp import DEFAULT_MODEL_FILE, default_model_path
from tokenrelay.errors import ConfigError

pytestmark = pytest.mark.model

REPO = "tester/SmolLM2-GGUF"
MODEL = f"hf:{REPO}/{DEFAULT_MODEL_FILE}"


@pytest.fixture(scope="module")
def hub() -> Iterator[FakeHub]:
    with FakeHub({f"{REPO}/{DEFAULT_MODEL_FILE}": default_model_path()}) as server:
        yield server


@pytest.fixture
def env(tmp_path: Path, hub: FakeHub) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith(("TOKENRELAY_", "OPENAI_", "HF_"))}
    out.update(
        XDG_DATA_HOME=str(tmp_path / "xdg"),
        HOME=str(tmp_path / "home"),
        HF_HOME=str(tmp_path / "hf"),
        HF_ENDPOINT=hub.url,
        HF_HUB_DISABLE_TELEMETRY="1",
    )
    hub.requests.clear()
    hub.drop_after = None
    hub.corrupt = False
    return out


def ask(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tokenrelay.cli", "ask", "--model", MODEL, "--max-tokens", "12"]
        + ["--temperature", "0", *args, "Tell me about Paris."],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=env,
        cwd=env["HOME"] if Path(env["HOME"]).is_dir() else None,
        timeout=300,
        check=False,
    )


def cached_blob(env: dict[str, str]) -> Path:
    blobs = list((Path(env["HF_HOME"]) / "hub" / f"models--{REPO.replace('/', '--')}" / "blobs").iterdir())
    assert len(blobs) == 1, blobs
    return blobs[0]


def test_download_once_then_from_the_cache(env: dict[str, str], hub: FakeHub) -> None:
    first = ask(env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip()  # an answer streamed from the downloaded model
    assert f"downloading {DEFAULT_MODEL_FILE} from {REPO}" in first.stderr
    # progress: a line every 10% when stderr is not a terminal
    steps = re.findall(rf"^tokenrelay: {re.escape(DEFAULT_MODEL_FILE)}: (\d+)% \(", first.stderr, re.M)
    assert len(steps) >= 9 and [int(s) for s in steps] == sorted(int(s) for s in steps), first.stderr
    assert f"{DEFAULT_MODEL_FILE}: 100% (98.4 MB of 98.4 MB)" in first.stderr
    assert "verifying" in first.stderr
    assert [path for path, _ in hub.gets()] == [
        f"/cdn/{hashlib.sha256(default_model_path().read_bytes()).hexdigest()}"
    ]
    blob = cached_blob(env)
    assert blob.read_bytes() == default_model_path().read_bytes()

    hub.requests.clear()
    second = ask(env)
    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout  # greedy: the same answer from the same file
    assert hub.file_requests() == []  # the cache answered: no request, so it works offline
    assert "downloading" not in second.stderr


def test_an_interrupted_download_resumes(env: dict[str, str], hub: FakeHub) -> None:
    size = default_model_path().stat().st_size
    hub.drop_after = 30_000_000  # the first GET dies after 30 MB
    result = ask(env)
    assert result.returncode == 0, result.stderr
    gets = hub.gets()
    assert len(gets) == 2, gets
    assert gets[0][1] is None
    resumed_at = int(gets[1][1].removeprefix("bytes=").rstrip("-"))  # type: ignore[union-attr]
    assert 0 < resumed_at <= 30_000_000 < size  # the second GET asked only for the rest
    assert cached_blob(env).read_bytes() == default_model_path().read_bytes()
    assert result.stdout.strip()


def test_a_corrupt_download_is_refused_and_deleted(env: dict[str, str], hub: FakeHub) -> None:
    hub.corrupt = True
    result = ask(env)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("tokenrelay: error:") and "corrupt" in last, result.stderr
    assert result.stdout == ""
    blobs = Path(env["HF_HOME"]) / "hub" / f"models--{REPO.replace('/', '--')}" / "blobs"
    assert not any(p.is_file() for p in blobs.iterdir())  # nothing corrupt left to load later
    hub.corrupt = False
    again = ask(env)  # and the next run downloads it again
    assert again.returncode == 0, again.stderr


def test_a_missing_file_is_a_one_line_error(env: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tokenrelay.cli", "ask", "--model", f"hf:{REPO}/nope.gguf", "hi"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("tokenrelay: error:") and "has no file nope.gguf" in last, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("arg", "repo", "filename", "revision"),
    [
        ("owner/repo/model.gguf", "owner/repo", "model.gguf", None),
        ("owner/repo/sub/dir/model.gguf@v1.0", "owner/repo", "sub/dir/model.gguf", "v1.0"),
        ("qwen2.5-1.5b", "bartowski/Qwen2.5-1.5B-Instruct-GGUF", "Qwen2.5-1.5B-Instruct-Q4_K_M.gguf", None),
    ],
)
def test_parse(arg: str, repo: str, filename: str, revision: str | None) -> None:
    ref = parse_hf(arg)
    assert (ref.repo_id, ref.filename, ref.revision) == (repo, filename, revision)


@pytest.mark.parametrize("arg", ["", "owner/repo", "owner/repo/model.bin", "owner/../x.gguf", "smollm2-135m"])
def test_parse_rejects(arg: str) -> None:
    with pytest.raises(ConfigError):
        parse_hf(arg)
