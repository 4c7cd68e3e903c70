"""Settings from the environment and backend selection by model string."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import aclosing
from pathlib import Path

import pytest

import tokenrelay.backends as backends
from tokenrelay.backends import Backend, load_backend, parse_model_string, register_backend
from tokenrelay.backends.base import TextChunk
from tokenrelay.config import Settings, default_data_dir, default_db_url
from tokenrelay.errors import ConfigError
from tokenrelay.messages import Message
from tokenrelay.testing import ScriptedBackend

SECRET = "sk-very-secret-0123456789"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No TOKENRELAY_*/OPENAI_* variables from the developer's shell; data under tmp_path."""
    for name in list(os.environ):
        if name.startswith(("TOKENRELAY_", "OPENAI_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    yield


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> dict[str, backends.BackendFactory]:
    """A private copy of the backend registry, so registrations do not leak between tests."""
    copy = dict(backends._REGISTRY)
    monkeypatch.setattr(backends, "_REGISTRY", copy)
    return copy


async def reply_text(backend: Backend) -> str:
    async with aclosing(backend.stream([Message.user("q")])) as chunks:
        return "".join([c.text async for c in chunks if isinstance(c, TextChunk)])


# --------------------------------------------------------------------- Settings.from_env


def test_defaults_without_environment() -> None:
    s = Settings.from_env(env={})
    assert s.model == "llamacpp"
    assert s.max_tokens == 2048
    assert s.temperature == 0.7
    assert s.openai_api_key is None
    assert s.openai_base_url is None
    assert s.api_keys == frozenset()
    assert s.port == 8000


def test_reads_tokenrelay_variables_with_coercion() -> None:
    env = {
        "TOKENRELAY_MODEL": "openai:gpt-4o-mini",
        "TOKENRELAY_MAX_TOKENS": "128",
        "TOKENRELAY_TEMPERATURE": "0.25",
        "TOKENRELAY_PORT": "9001",
        "TOKENRELAY_REQUEST_TIMEOUT_S": "2.5",
        "TOKENRELAY_LLAMA_N_THREADS": "3",
        "TOKENRELAY_API_KEYS": " key-a, key-b,,key-a ,",
        "TOKENRELAY_SYSTEM_PROMPT": "Be terse. 簡潔に。",
        "TOKENRELAY_TOOL_PROTOCOL": "native",
        "TOKENRELAY_DB": "sqlite:////tmp/x.db",
    }
    s = Settings.from_env(env=env)
    assert s.model == "openai:gpt-4o-mini"
    assert s.max_tokens == 128 and type(s.max_tokens) is int
    assert s.temperature == 0.25 and type(s.temperature) is float
    assert s.port == 9001 and type(s.port) is int
    assert s.request_timeout_s == 2.5
    assert s.llama_n_threads == 3
    assert s.api_keys == frozenset({"key-a", "key-b"})
    assert s.system_prompt == "Be terse. 簡潔に。"
    assert s.tool_protocol == "native"
    assert s.db == "sqlite:////tmp/x.db"


def test_float_fields_accept_integers() -> None:
    assert Settings.from_env(env={"TOKENRELAY_TEMPERATURE": "1"}).temperature == 1.0


def test_reads_the_process_environment_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENRELAY_MAX_TOKENS", "77")
    monkeypatch.setenv("TOKENRELAY_MODEL", "scripted:hi")
    s = Settings.from_env()
    assert s.max_tokens == 77
    assert s.model == "scripted:hi"


def test_unrelated_variables_are_ignored() -> None:
    s = Settings.from_env(env={"TOKENRELAY_NOT_A_FIELD": "x", "MODEL": "openai:x", "TOKENRELAY_EXTRA": "{}"})
    assert s.model == "llamacpp"
    assert not hasattr(s, "extra")  # no catch-all field: every setting is a declared one


def test_openai_variables_are_honoured() -> None:
    s = Settings.from_env(env={"OPENAI_API_KEY": SECRET, "OPENAI_BASE_URL": "http://localhost:8080/v1"})
    assert s.openai_api_key == SECRET
    assert s.openai_base_url == "http://localhost:8080/v1"


def test_tokenrelay_openai_variables_beat_the_generic_ones() -> None:
    env = {
        "OPENAI_API_KEY": "generic",
        "TOKENRELAY_OPENAI_API_KEY": "specific",
        "OPENAI_BASE_URL": "http://generic/v1",
        "TOKENRELAY_OPENAI_BASE_URL": "http://specific/v1",
    }
    s = Settings.from_env(env=env)
    assert s.openai_api_key == "specific"
    assert s.openai_base_url == "http://specific/v1"


def test_empty_openai_variables_are_ignored() -> None:
    s = Settings.from_env(env={"OPENAI_API_KEY": "", "OPENAI_BASE_URL": ""})
    assert s.openai_api_key is None and s.openai_base_url is None


def test_overrides_beat_the_environment() -> None:
    env = {"TOKENRELAY_MODEL": "openai:x", "TOKENRELAY_MAX_TOKENS": "100", "OPENAI_API_KEY": "from-env"}
    s = Settings.from_env(env=env, model="scripted:y", max_tokens=5, openai_api_key="from-flag")
    assert s.model == "scripted:y"
    assert s.max_tokens == 5
    assert s.openai_api_key == "from-flag"


def test_none_overrides_are_ignored() -> None:
    env = {"TOKENRELAY_MODEL": "openai:x", "TOKENRELAY_TEMPERATURE": "0.1"}
    s = Settings.from_env(env=env, model=None, temperature=None, max_tokens=None)
    assert s.model == "openai:x"
    assert s.temperature == 0.1
    assert s.max_tokens == 2048


def test_with_ignores_none_and_returns_a_copy() -> None:
    s = Settings.from_env(env={})
    t = s.with_(model="scripted:z", max_tokens=None)
    assert t.model == "scripted:z" and t.max_tokens == 2048
    assert s.model == "llamacpp"


@pytest.mark.parametrize(
    ("name", "raw", "expected"),
    [
        ("TOKENRELAY_MAX_TOKENS", "lots", "TOKENRELAY_MAX_TOKENS='lots' is not a valid int"),
        ("TOKENRELAY_PORT", "80.5", "TOKENRELAY_PORT='80.5' is not a valid int"),
        ("TOKENRELAY_TEMPERATURE", "hot", "TOKENRELAY_TEMPERATURE='hot' is not a valid float"),
        ("TOKENRELAY_TEMPERATURE", "5", "temperature must be between 0 and 2"),
        ("TOKENRELAY_MAX_TOKENS", "0", "max_tokens must be at least 1"),
        ("TOKENRELAY_MAX_ITERATIONS", "0", "max_iterations must be at least 1"),
        ("TOKENRELAY_MEMORY_K", "-1", "memory_k must be 0 or more"),
        ("TOKENRELAY_TOOL_PROTOCOL", "magic", "tool_protocol must be auto, native or json"),
        ("TOKENRELAY_EARLY_STOPPING_METHOD", "never", "early_stopping_method must be 'generate' or 'force'"),
    ],
)
def test_invalid_values_raise_config_error_with_a_clear_message(name: str, raw: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env={name: raw})
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("field", "value"),
    [("temperature", 9.0), ("temperature", -0.1), ("max_tokens", 0), ("max_iterations", 0)],
)
def test_invalid_overrides_raise_config_error(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field):
        Settings.from_env(env={}, **{field: value})


def test_config_error_is_a_tokenrelay_error_with_bad_request_code() -> None:
    from tokenrelay.errors import TokenrelayError

    with pytest.raises(TokenrelayError) as info:
        Settings(temperature=3)
    assert info.value.code == "bad_request"


def test_secrets_are_not_in_repr() -> None:
    s = Settings.from_env(env={"OPENAI_API_KEY": SECRET, "TOKENRELAY_API_KEYS": "server-key-1,server-key-2"})
    shown = repr(s) + str(s)
    assert SECRET not in shown
    assert "server-key-1" not in shown and "server-key-2" not in shown
    assert "llamacpp" in shown  # the repr is still useful


def test_default_db_lives_in_the_xdg_data_dir(tmp_path: Path) -> None:
    assert default_data_dir() == tmp_path / "xdg" / "tokenrelay"
    assert default_db_url() == "sqlite:///" + str(tmp_path / "xdg" / "tokenrelay" / "tokenrelay.db")
    assert Settings().db == default_db_url()


# --------------------------------------------------------------------- load_backend


def test_unknown_prefix_names_the_known_backends() -> None:
    with pytest.raises(ConfigError) as info:
        load_backend("nosuch:thing", Settings())
    message = str(info.value)
    assert "'nosuch'" in message
    for known in ("llamacpp", "openai", "scripted"):
        assert known in message


def test_missing_gguf_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "models" / "missing.gguf"
    with pytest.raises(ConfigError) as info:
        load_backend(f"llamacpp:{missing}", Settings())
    assert str(missing) in str(info.value)


def test_missing_gguf_at_root_names_the_path() -> None:
    with pytest.raises(ConfigError, match="/missing.gguf"):
        load_backend("llamacpp:/missing.gguf", Settings())


@pytest.mark.anyio
async def test_scripted_model_string_answers_every_call_with_its_text() -> None:
    backend = load_backend("scripted:Hello, 世界", Settings())
    assert isinstance(backend, ScriptedBackend)
    assert await reply_text(backend) == "Hello, 世界"
    assert await reply_text(backend) == "Hello, 世界"
    assert len(backend.calls) == 2


@pytest.mark.anyio
async def test_scripted_model_string_keeps_colons_in_the_text() -> None:
    text = '{"action": "Final Answer", "action_input": "a: b"}'
    assert await reply_text(load_backend("scripted:" + text, Settings())) == text


def test_model_prefix_is_case_and_space_insensitive() -> None:
    assert parse_model_string("  Scripted : hi ") == ("scripted", "hi")
    assert parse_model_string("llamacpp") == ("llamacpp", "")
    assert isinstance(load_backend(" SCRIPTED:hi", Settings()), ScriptedBackend)


@pytest.mark.anyio
async def test_model_defaults_to_settings_model() -> None:
    backend = load_backend(settings=Settings(model="scripted:from settings"))
    assert await reply_text(backend) == "from settings"


@pytest.mark.anyio
async def test_model_defaults_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENRELAY_MODEL", "scripted:from env")
    assert await reply_text(load_backend()) == "from env"


@pytest.mark.anyio
async def test_openai_backend_takes_url_and_key_from_settings() -> None:
    from tokenrelay.backends.openai import OpenAIBackend

    backend = load_backend(
        "openai:my-model", Settings(openai_base_url="http://127.0.0.1:9/v1/", openai_api_key=SECRET)
    )
    try:
        assert isinstance(backend, OpenAIBackend)
        assert backend.name == "openai:my-model"
        assert backend.base_url == "http://127.0.0.1:9/v1"
        assert SECRET not in repr(backend)
    finally:
        await backend.aclose()


def test_openai_backend_rejects_a_bad_url() -> None:
    with pytest.raises(ConfigError, match="base URL"):
        load_backend("openai:x", Settings(openai_base_url="ftp://example.com"))


@pytest.mark.anyio
async def test_register_backend_adds_a_prefix(registry: dict[str, backends.BackendFactory]) -> None:
    seen: list[tuple[str, Settings]] = []

    def factory(arg: str, settings: Settings) -> Backend:
        seen.append((arg, settings))
        return ScriptedBackend(replies=[f"echo {arg}"], name=f"echo:{arg}")

    register_backend("echo", factory)
    settings = Settings(max_tokens=9)
    backend = load_backend("echo:ping", settings)
    assert backend.name == "echo:ping"
    assert seen == [("ping", settings)]
    assert await reply_text(backend) == "echo ping"

    with pytest.raises(ConfigError) as info:
        load_backend("nosuch", Settings())
    assert "echo" in str(info.value)  # the new prefix is listed among the known ones


def test_register_backend_can_replace_a_prefix(registry: dict[str, backends.BackendFactory]) -> None:
    replacement = ScriptedBackend(replies=["replaced"])
    register_backend("openai", lambda arg, settings: replacement)
    assert load_backend("openai:gpt-4o-mini", Settings()) is replacement


def test_a_bare_db_path_becomes_a_sqlite_url_from_env_or_argument() -> None:
    assert Settings.from_env(env={"TOKENRELAY_DB": "data/t.db"}).db == "sqlite:///data/t.db"
    assert Settings.from_env(env={}, db="data/t.db").db == "sqlite:///data/t.db"
    assert Settings(db="/var/lib/t.db").db == "sqlite:////var/lib/t.db"
    assert Settings(db="~/t.db").db == "sqlite:///~/t.db"
    for url in ("sqlite:///x.db", "postgresql://u@h/db", "memory://", "memory:", ":memory:"):
        assert Settings(db=url).db == url
    once = Settings(db="t.db")
    assert once.with_(max_tokens=5).db == "sqlite:///t.db"  # idempotent


def test_the_slow_client_and_per_key_settings_come_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "TOKENRELAY_ALLOWED_HOSTS": "tokenrelay.lan, other.lan",
            "TOKENRELAY_API_DOCS": "1",
            "TOKENRELAY_HEADER_TIMEOUT_S": "2.5",
            "TOKENRELAY_BODY_TIMEOUT_S": "7",
            "TOKENRELAY_MAX_PENDING_CONNECTIONS": "50",
            "TOKENRELAY_MAX_RUNS_PER_KEY": "3",
            "TOKENRELAY_MAX_SESSIONS_PER_KEY": "0",
            "TOKENRELAY_REQUESTS_PER_MINUTE_PER_KEY": "120",
        }
    )
    assert settings.allowed_hosts == frozenset({"tokenrelay.lan", "other.lan"})
    assert settings.api_docs is True
    assert (settings.header_timeout_s, settings.body_timeout_s) == (2.5, 7.0)
    assert settings.max_pending_connections == 50
    assert (settings.max_runs_per_key, settings.max_sessions_per_key) == (3, 0)
    assert settings.requests_per_minute_per_key == 120


@pytest.mark.parametrize(
    ("field", "value"),
    [("header_timeout_s", 0), ("body_timeout_s", -1), ("max_head_bytes", 0), ("max_runs_per_key", -1)],
)
def test_the_slow_client_and_per_key_settings_are_checked(field: str, value: float) -> None:
    with pytest.raises(ConfigError, match=field):
        Settings(**{field: value})


def test_built_in_prefixes_are_entry_points_like_any_plug_in() -> None:
    """pyproject.toml declares every built-in prefix in the `tokenrelay.backends` group, and
    the registry's fallback table (for metadata installed before a prefix existed) agrees."""
    import tomllib
    from pathlib import Path

    from tokenrelay.backends.registry import BUILTIN, ENTRY_POINT_GROUP

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert pyproject["project"]["entry-points"][ENTRY_POINT_GROUP] == dict(BUILTIN)


def test_backends_do_not_import_testing_or_integrations() -> None:
    import subprocess
    import sys

    code = (
        "import sys, tokenrelay.backends as b; b.load_backend('openai:m');"
        "up = ('tokenrelay.testing', 'tokenrelay.integrations');"
        "print(sorted(m for m in sys.modules if m.startswith(up)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_broken_plug_in_is_a_config_error() -> None:
    from tokenrelay.backends.registry import _load

    with pytest.raises(ConfigError, match="cannot load the backend plug-in"):
        _load("tokenrelay.no_such_module:factory")
