"""`hf:` model strings: GGUF files from the Hugging Face Hub, downloaded once, run on llama.cpp.

`hf:OWNER/REPO/FILE.gguf` (the file may be in a folder: `hf:OWNER/REPO/dir/FILE.gguf`),
optionally `@REVISION` at the end, or `hf:<alias>` for a recommended model
(`tokenrelay.models`, e.g. `hf:qwen2.5-1.5b`).

Downloads go through `huggingface_hub.hf_hub_download` into its cache (`HF_HOME`, honouring
`HF_ENDPOINT`, `HF_TOKEN` and offline mode). Progress goes to stderr: a tqdm bar on a
terminal, a line every 10% otherwise (logs, pipes: a bar's carriage returns would garble
them). Invariants:

* a file already in the cache is used without touching the network (so it also works
  offline, and startup costs no request);
* a dropped connection is resumed where it stopped, with HTTP Range requests: huggingface_hub
  2.x retries inside the call; 0.x-1.x keeps the partial file, which the next call (here, up
  to 3 in a row; or the next run) resumes. Hub files stored with Xet are fetched in
  content-addressed chunks that survive an interrupted run;
* a fresh download is verified before use: its size by huggingface_hub, its SHA-256 against
  the Hub's LFS object id (the blob's name in the cache). A mismatch deletes the file and
  fails with a message, so a corrupt file is never loaded.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenrelay.errors import BackendError, ConfigError
from tokenrelay.progress import human_size, note

__all__ = ["HfFile", "ensure_local", "parse_hf"]

_SHA256 = re.compile(r"[0-9a-f]{64}")
_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class HfFile:
    repo_id: str
    filename: str
    revision: str | None = None

    @property
    def model(self) -> str:
        return f"hf:{self.repo_id}/{self.filename}" + (f"@{self.revision}" if self.revision else "")


def parse_hf(arg: str) -> HfFile:
    """The file an `hf:` argument names (an alias or OWNER/REPO/FILE.gguf[@REVISION])."""
    from tokenrelay.backends.catalog import resolve_alias

    arg = arg.strip()
    known = resolve_alias(arg)
    if known is not None:
        if not known.model.startswith("hf:"):
            raise ConfigError(f"hf:{arg} is the built-in default model: use --model {known.model}")
        arg = known.model[3:]
    path, _, revision = arg.partition("@")
    parts = [p for p in path.split("/") if p]
    if len(parts) < 3 or not parts[-1].lower().endswith(".gguf") or ".." in parts:
        raise ConfigError(
            f"hf:{arg} is not a GGUF file on the Hub: use hf:OWNER/REPO/FILE.gguf "
            "(e.g. hf:bartowski/Qwen2.5-1.5B-Instruct-GGUF/Qwen2.5-1.5B-Instruct-Q4_K_M.gguf) "
            "or a recommended alias (tokenrelay models)"
        )
    return HfFile(
        repo_id="/".join(parts[:2]), filename="/".join(parts[2:]), revision=revision.strip() or None
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _verify(pointer: Path) -> None:
    """Check a freshly downloaded file against the content hash it is stored under."""
    blob = Path(os.path.realpath(pointer))
    expected = blob.name
    if not _SHA256.fullmatch(expected):  # not an LFS object (or no symlinks): size was checked
        return
    note(f"verifying {pointer.name} (SHA-256)...")
    actual = _sha256(blob)
    if actual != expected:
        for p in (pointer, blob):
            try:
                p.unlink()
            except OSError:
                pass
        raise BackendError(
            f"the download of {pointer.name} is corrupt (SHA-256 {actual[:12]}..., expected "
            f"{expected[:12]}...); it was deleted: run the command again to download it again"
        )


def _progress_class(label: str) -> type[Any] | None:
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - huggingface_hub depends on tqdm
        return None

    class DownloadProgress(tqdm):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.pop("name", None)  # huggingface_hub's own bar class takes a group name
            self._lines = not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty())
            self._bytes = int(kwargs.get("initial") or 0)
            self._size = kwargs.get("total")
            self._label = label
            kwargs["desc"] = label
            self._next_percent = 10
            kwargs.setdefault("file", sys.stderr)
            if self._lines:
                kwargs["disable"] = True
            super().__init__(*args, **kwargs)

        def update(self, n: float | None = 1) -> bool | None:
            if self._lines and n:
                self._bytes += int(n)
                if self._size:
                    percent = 100 * self._bytes // int(self._size)
                    if percent >= self._next_percent:
                        note(
                            f"{self._label}: {min(percent, 100)}% "
                            f"({human_size(self._bytes)} of {human_size(int(self._size))})"
                        )
                        self._next_percent = (percent // 10 + 1) * 10
            result: bool | None = super().update(n)
            return result

    return DownloadProgress


def ensure_local(ref: HfFile) -> Path:
    """The local path of `ref`, downloading it first when it is not cached."""
    try:
        from huggingface_hub import hf_hub_download, try_to_load_from_cache
        from huggingface_hub.errors import (
            EntryNotFoundError,
            GatedRepoError,
            HfHubHTTPError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError:  # pragma: no cover - a dependency; only a broken install lacks it
        raise ConfigError("hf: models need huggingface_hub: pip install huggingface_hub") from None
    cached = try_to_load_from_cache(ref.repo_id, ref.filename, revision=ref.revision)
    if isinstance(cached, str) and Path(cached).is_file():
        return Path(cached)
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    note(f"downloading {ref.filename} from {ref.repo_id} ({endpoint}) into the Hugging Face cache, once")
    options: dict[str, Any] = {}
    progress = _progress_class(Path(ref.filename).name)
    if progress is not None and "tqdm_class" in inspect.signature(hf_hub_download).parameters:
        options["tqdm_class"] = progress
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            path = Path(hf_hub_download(ref.repo_id, ref.filename, revision=ref.revision, **options))
            break
        except GatedRepoError:
            raise ConfigError(
                f"{ref.repo_id} is gated: accept its terms on the Hub and set HF_TOKEN, or pick another model"
            ) from None
        except RepositoryNotFoundError:
            raise ConfigError(f"no model repository {ref.repo_id} on the Hub (or it is private)") from None
        except RevisionNotFoundError:
            raise ConfigError(f"{ref.repo_id} has no revision {ref.revision!r}") from None
        except LocalEntryNotFoundError:  # (a subclass of EntryNotFoundError in older versions)
            raise BackendError(
                f"cannot download {ref.model}: the Hub is unreachable and the file is not cached "
                "(check the network, HF_ENDPOINT, or HF_HUB_OFFLINE)"
            ) from None
        except EntryNotFoundError:
            raise ConfigError(f"{ref.repo_id} has no file {ref.filename}") from None
        except HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            raise BackendError(f"downloading {ref.model} failed (HTTP {status})", status=status) from None
        except Exception as exc:  # connection lost (requests/httpx errors), disk full, size mismatch
            if attempt == _ATTEMPTS:
                raise BackendError(f"downloading {ref.model} failed: {exc}") from None
            # huggingface_hub < 1.x keeps the partial file and resumes it on the next call;
            # later versions have already retried with Range requests inside the call
            note(f"the download was interrupted ({type(exc).__name__}); resuming (attempt {attempt + 1})")
    _verify(path)
    note(f"{ref.filename}: {human_size(path.stat().st_size)} ready at {path}")
    return path
