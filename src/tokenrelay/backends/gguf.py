"""Read a GGUF file's metadata (its key/value header) without loading the model.

The context window and the KV cache's size per token must be known before llama.cpp
creates the context, so they are read here from the header: `<arch>.context_length`,
`<arch>.block_count`, `<arch>.attention.head_count(_kv)`, `<arch>.embedding_length` and
the key/value lengths. Only the header is read (arrays such as the vocabulary are skipped),
a few milliseconds even for a 150,000-token vocabulary. Format:
https://github.com/ggml-org/ggml/blob/master/docs/gguf.md
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["GGUFError", "ModelShape", "model_shape", "read_metadata"]

_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9
_MAX_KEYS = 1_000_000


class GGUFError(ValueError):
    """The file is not a readable GGUF file."""


def _unpack(f: BinaryIO, fmt: str) -> Any:
    size = struct.calcsize(fmt)
    data = f.read(size)
    if len(data) != size:
        raise GGUFError("the file ends inside its header")
    return struct.unpack(fmt, data)[0]


def _string(f: BinaryIO) -> str:
    n = _unpack(f, "<Q")
    if n > 1 << 24:
        raise GGUFError("a header string is implausibly long")
    data = f.read(n)
    if len(data) != n:
        raise GGUFError("the file ends inside its header")
    return data.decode("utf-8", "replace")


def _value(f: BinaryIO, kind: int, keep: bool) -> Any:
    if kind in _SCALARS:
        return _unpack(f, _SCALARS[kind])
    if kind == _STRING:
        return _string(f)
    if kind == _ARRAY:
        item, n = _unpack(f, "<I"), _unpack(f, "<Q")
        if item in _SCALARS and not keep:
            f.seek(n * struct.calcsize(_SCALARS[item]), 1)
            return None
        values = [_value(f, item, keep) for _ in range(n)]
        return values if keep else None
    raise GGUFError(f"unknown GGUF value type {kind}")


def read_metadata(path: str | Path, *, arrays: bool = False) -> dict[str, Any]:
    """The header's key/value pairs. Arrays are skipped (None) unless `arrays` is true."""
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise GGUFError(f"{Path(path).name} is not a GGUF file")
        version = _unpack(f, "<I")
        if version < 2:
            raise GGUFError(f"GGUF version {version} is too old")
        _unpack(f, "<Q")  # tensor count
        n_keys = _unpack(f, "<Q")
        if n_keys > _MAX_KEYS:
            raise GGUFError("the header has an implausible number of keys")
        meta: dict[str, Any] = {}
        for _ in range(n_keys):
            key = _string(f)
            meta[key] = _value(f, _unpack(f, "<I"), arrays)
        return meta


@dataclass(frozen=True, slots=True)
class ModelShape:
    """What sizing the context needs to know about a model."""

    architecture: str
    context_length: int | None
    #: bytes of KV cache per token of context at f16 (llama.cpp's default cache type)
    kv_bytes_per_token: int | None


def model_shape(path: str | Path) -> ModelShape:
    meta = read_metadata(path)
    arch = str(meta.get("general.architecture", ""))

    def num(key: str) -> int | None:
        value = meta.get(f"{arch}.{key}")
        if isinstance(value, list):  # per-layer values in some architectures
            value = max(value) if value else None
        return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

    layers, heads, kv_heads, width = (
        num("block_count"),
        num("attention.head_count"),
        num("attention.head_count_kv"),
        num("embedding_length"),
    )
    kv_heads = kv_heads or heads
    key_len = num("attention.key_length") or (width // heads if width and heads else None)
    value_len = num("attention.value_length") or key_len
    per_token = None
    if layers and kv_heads and key_len and value_len:
        per_token = layers * kv_heads * (key_len + value_len) * 2
    return ModelShape(architecture=arch, context_length=num("context_length"), kv_bytes_per_token=per_token)
