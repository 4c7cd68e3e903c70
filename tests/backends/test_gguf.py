"""GGUF header reading and the context window that follows the model."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from tokenrelay.backends.gguf import GGUFError, model_shape, read_metadata
from tokenrelay.backends.llamacpp import context_size, default_model_path


def _gguf(path: Path, meta: dict[str, object]) -> Path:
    """A GGUF file with `meta` and no tensors (enough for header readers)."""
    out = bytearray(b"GGUF" + struct.pack("<IQQ", 3, 0, len(meta)))
    for key, value in meta.items():
        out += struct.pack("<Q", len(key)) + key.encode()
        if isinstance(value, str):
            out += struct.pack("<IQ", 8, len(value.encode())) + value.encode()
        elif isinstance(value, list):
            out += struct.pack("<IIQ", 9, 5, len(value)) + b"".join(struct.pack("<i", v) for v in value)
        else:
            out += struct.pack("<II", 4, value)
    path.write_bytes(bytes(out))
    return path


def test_the_default_model_header() -> None:
    meta = read_metadata(default_model_path())
    assert meta["general.architecture"] == "llama"
    assert meta["tokenizer.ggml.tokens"] is None  # arrays are skipped unless asked for
    shape = model_shape(default_model_path())
    assert shape.context_length == 8192
    # 30 layers x 3 KV heads x (64 + 64) dims x 2 bytes (f16)
    assert shape.kv_bytes_per_token == 30 * 3 * 128 * 2


def test_a_synthetic_header(tmp_path: Path) -> None:
    path = _gguf(
        tmp_path / "m.gguf",
        {
            "general.architecture": "qwen2",
            "qwen2.context_length": 32768,
            "qwen2.block_count": 36,
            "qwen2.attention.head_count": 16,
            "qwen2.attention.head_count_kv": 2,
            "qwen2.embedding_length": 2048,
            "some.array": [1, 2, 3],
        },
    )
    assert read_metadata(path, arrays=True)["some.array"] == [1, 2, 3]
    shape = model_shape(path)
    assert (shape.architecture, shape.context_length) == ("qwen2", 32768)
    assert shape.kv_bytes_per_token == 36 * 2 * (128 + 128) * 2


@pytest.mark.parametrize(
    "content", [b"", b"GGUF", b"not a gguf file at all", b"GGUF\x03\x00\x00\x00" + b"\xff" * 16]
)
def test_bad_files_are_gguf_errors(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(content)
    with pytest.raises(GGUFError):
        read_metadata(path)


def test_context_follows_the_model_capped_by_setting_and_memory(tmp_path: Path) -> None:
    path = _gguf(
        tmp_path / "m.gguf",
        {
            "general.architecture": "llama",
            "llama.context_length": 131072,
            "llama.block_count": 32,
            "llama.attention.head_count": 32,
            "llama.attention.head_count_kv": 8,
            "llama.embedding_length": 4096,
        },
    )  # 128 KB of KV cache per token
    assert context_size(path, None, 32768, memory=64 * 1024**3) == 32768  # the setting caps it
    assert context_size(path, None, 200_000, memory=64 * 1024**3) == 131072  # the model's own
    weights = path.stat().st_size
    # half of what the weights leave (2 GiB), in 128 KiB tokens
    assert context_size(path, None, 32768, memory=2 * 1024**3 + weights) == 8192
    assert context_size(path, None, 32768, memory=10) == 512  # never below 512
    assert context_size(path, 2048, 32768, memory=10) == 2048  # an explicit size is used as is


def test_an_unreadable_header_falls_back(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"nope")
    assert context_size(bogus, None, 32768) == 4096
