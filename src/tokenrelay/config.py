"""Settings: one object for the library, the CLI and the server, read from the environment.

Precedence: explicit arguments (CLI flags, keyword arguments) > `TOKENRELAY_*` environment
variables > defaults. Secrets (API keys) are excluded from `repr` so they never reach logs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from platformdirs import user_data_dir

from tokenrelay.errors import ConfigError

__all__ = ["Settings", "db_url", "default_data_dir", "default_db_url"]

ToolProtocol = Literal["auto", "native", "json"]
EarlyStopping = Literal["generate", "force"]
AnswerPolicy = Literal["stream", "hold"]


def default_data_dir() -> Path:
    """The per-user data directory: `$XDG_DATA_HOME/tokenrelay` when that variable is set (on
    every system), else the platform's place (platformdirs): `~/.local/share/tokenrelay` on
    Linux, `~/Library/Application Support/tokenrelay` on macOS, `%LOCALAPPDATA%\\tokenrelay`
    on Windows. Where an older tokenrelay kept its data in `~/.local/share/tokenrelay` and the
    platform's place does not exist yet, that older directory stays in use."""
    base = os.environ.get("XDG_DATA_HOME")
    if base:
        return Path(base) / "tokenrelay"
    chosen = Path(user_data_dir("tokenrelay", appauthor=False))
    legacy = Path.home() / ".local" / "share" / "tokenrelay"
    if chosen != legacy and not chosen.exists() and legacy.is_dir():
        return legacy
    return chosen


def default_db_url() -> str:
    return "sqlite:///" + str(default_data_dir() / "tokenrelay.db")


def db_url(value: str) -> str:
    """The database URL for a `db` setting: a bare path (`--db notes.db`, `TOKENRELAY_DB=~/t.db`)
    becomes a SQLite URL, so every consumer sees one form; URLs and the in-memory names pass as is.
    Idempotent."""
    if "://" in value or value in ("memory:", ":memory:") or not value.strip():
        return value
    return "sqlite:///" + value


@dataclass(kw_only=True)
class Settings:
    # model
    model: str = "llamacpp"
    max_tokens: int = 2048
    temperature: float = 0.7
    system_prompt: str | None = None
    openai_base_url: str | None = None
    openai_api_key: str | None = field(default=None, repr=False)
    request_timeout_s: float = 60.0
    #: retries of an upstream call that failed before its first token (429, 5xx, unreachable)
    upstream_retries: int = 2
    #: no retry starts later than this after the first attempt did
    upstream_retry_max_s: float = 20.0
    #: context window of llama.cpp models; None: the model's own (GGUF metadata), capped by
    #: llama_max_ctx and by available memory
    llama_n_ctx: int | None = None
    llama_max_ctx: int = 32768
    #: llama.cpp threads for decoding (and for prompts unless llama_n_threads_batch is set);
    #: None: from the CPUs this process may use (backends/machine.py)
    llama_n_threads: int | None = None
    llama_n_threads_batch: int | None = None
    # agent
    memory_k: int = 5
    max_iterations: int = 3
    early_stopping_method: EarlyStopping = "generate"
    tool_protocol: ToolProtocol = "auto"
    tool_timeout_s: float = 30.0
    #: stream: answer text as the model writes it (narration re-labelled); hold: final text only
    answer_policy: AnswerPolicy = "stream"
    # storage
    db: str = field(default_factory=default_db_url)
    # server
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    api_keys: frozenset[str] = field(default=frozenset(), repr=False)
    max_text_chars: int = 32_000
    max_body_bytes: int = 1_000_000
    keepalive_s: float = 15.0
    #: a run that produces more events than this is stopped with an error (memory bound per run)
    max_buffered_events: int = 100_000
    #: a resumable run left by its last client is cancelled unless one resumes it within this many
    #: seconds (a reload, a dropped connection); negative: never (it runs to the end)
    resume_grace_s: float = 30.0
    presets_file: str | None = None
    #: host names a server without API keys answers besides localhost/127.0.0.1/[::1] and
    #: `host` (DNS rebinding); "*" answers any
    allowed_hosts: frozenset[str] = frozenset()
    #: Swagger UI at /docs (it loads its script from a CDN, on the page's origin): off by default
    api_docs: bool = False
    # slow and greedy clients (see server/protocol.py and docs/reliability.md)
    #: a request's head must arrive within this time (408 and the connection closes)
    header_timeout_s: float = 10.0
    #: a request's body must arrive within this time (408 and the connection closes)
    body_timeout_s: float = 30.0
    max_head_bytes: int = 32_768
    #: connections waiting for a request head (new or idle) beyond this close the oldest
    max_pending_connections: int = 1000
    #: request bodies being read at once, all together (beyond: 503 with Retry-After)
    max_buffered_body_bytes: int = 64_000_000
    # per-key limits (only with API keys; 0 = no limit), 429 with Retry-After beyond them
    max_runs_per_key: int = 32
    max_sessions_per_key: int = 10_000
    requests_per_minute_per_key: int = 600
    #: Redis URL for several workers: shared run event logs, cancel anywhere, worker leases
    redis_url: str | None = None
    redis_prefix: str = "tokenrelay:"
    event_retention_s: float = 3600.0
    # operations
    #: debug | info | warning | error | critical (server logs, logfmt on stderr)
    log_level: str = "info"
    #: Prometheus metrics at GET /metrics
    metrics: bool = True
    #: /metrics needs no API key even when api_keys are set (a scraper on a private network)
    metrics_public: bool = False

    def __post_init__(self) -> None:
        self.db = db_url(self.db)
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ConfigError(f"max_tokens must be at least 1, not {self.max_tokens}")
        if not 0.0 <= self.temperature <= 2.0:
            raise ConfigError(f"temperature must be between 0 and 2, not {self.temperature}")
        if self.upstream_retries < 0:
            raise ConfigError(f"upstream_retries must be 0 or more, not {self.upstream_retries}")
        if not self.upstream_retry_max_s >= 0:
            raise ConfigError(f"upstream_retry_max_s must be 0 or more, not {self.upstream_retry_max_s}")
        if self.log_level.lower() not in ("debug", "info", "warning", "error", "critical"):
            raise ConfigError(
                f"log_level must be debug, info, warning, error or critical, not {self.log_level!r}"
            )
        if self.memory_k < 0:
            raise ConfigError(f"memory_k must be 0 or more, not {self.memory_k}")
        if self.max_iterations < 1:
            raise ConfigError(f"max_iterations must be at least 1, not {self.max_iterations}")
        if self.early_stopping_method not in ("generate", "force"):
            raise ConfigError(
                f"early_stopping_method must be 'generate' or 'force', not {self.early_stopping_method!r}"
            )
        for name in ("header_timeout_s", "body_timeout_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be more than 0, not {getattr(self, name)}")
        for name in ("max_head_bytes", "max_pending_connections", "max_buffered_body_bytes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, not {getattr(self, name)}")
        for name in ("max_runs_per_key", "max_sessions_per_key", "requests_per_minute_per_key"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be 0 (no limit) or more, not {getattr(self, name)}")
        if self.answer_policy not in ("stream", "hold"):
            raise ConfigError(f"answer_policy must be stream or hold, not {self.answer_policy!r}")
        if self.tool_protocol not in ("auto", "native", "json"):
            raise ConfigError(f"tool_protocol must be auto, native or json, not {self.tool_protocol!r}")

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from `TOKENRELAY_<FIELD>` variables (plus OPENAI_API_KEY/OPENAI_BASE_URL),
        then `overrides` (None values are ignored, so CLI defaults can pass through)."""
        env = dict(os.environ if env is None else env)
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get("TOKENRELAY_" + f.name.upper())
            if raw is None:
                continue
            values[f.name] = _coerce(f.name, str(f.type), raw)
        if "openai_api_key" not in values and env.get("OPENAI_API_KEY"):
            values["openai_api_key"] = env["OPENAI_API_KEY"]
        if "openai_base_url" not in values and env.get("OPENAI_BASE_URL"):
            values["openai_base_url"] = env["OPENAI_BASE_URL"]
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def _coerce(name: str, type_name: str, raw: str) -> Any:
    try:
        if type_name.startswith("frozenset"):
            return frozenset(part.strip() for part in raw.split(",") if part.strip())
        if type_name.startswith("int"):
            return int(raw)
        if type_name.startswith("float"):
            return float(raw)
        if type_name.startswith("bool"):
            return raw.strip().lower() in ("1", "true", "yes", "on")
    except ValueError:
        raise ConfigError(f"TOKENRELAY_{name.upper()}={raw!r} is not a valid {type_name}") from None
    return raw
