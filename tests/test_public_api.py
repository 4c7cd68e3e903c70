"""The public surface: `tokenrelay.__all__`, and the embedded model as the only default."""

from __future__ import annotations

import importlib
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import tokenrelay
from tokenrelay.backends import load_backend
from tokenrelay.config import Settings

EXPECTED_NAMES = {
    "Agent",
    "AnswerDelta",
    "Backend",
    "BackendError",
    "CallbackHandler",
    "ConfigError",
    "Event",
    "GenerationSettings",
    "Message",
    "Narration",
    "ReasoningDelta",
    "RunError",
    "RunFinished",
    "RunStarted",
    "Settings",
    "StreamingStdOutCallbackHandler",
    "TokenrelayError",
    "Tool",
    "ToolCall",
    "ToolCallFinished",
    "ToolCallStarted",
    "ToolSpec",
    "calculator",
    "load_backend",
    "register_backend",
    "run_callbacks",
    "stream_chat",
    "tool",
}


#: the bundled client (`tokenrelay.client`): not re-exported at the top level
CLIENT_NAMES = {
    "AsyncStream",
    "DEFAULT_TIMEOUT",
    "IncompleteStreamError",
    "Reconnect",
    "Stream",
    "TokenrelayClientError",
    "TokenrelayConnectionError",
    "TokenrelayHTTPError",
    "astream_events",
    "astream_text",
    "stream_cli",
    "stream_events",
    "stream_text",
}
SSE_NAMES = {"KEEPALIVE", "SSEDecodeError", "SSEDecoder", "ServerSentEvent", "encode_batch", "encode_event"}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """The process environment without TOKENRELAY_*/OPENAI_* variables (also returned, for
    subprocesses), with XDG_DATA_HOME under tmp_path."""
    for name in list(os.environ):
        if name.startswith(("TOKENRELAY_", "OPENAI_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    return dict(os.environ)


def test_all_is_sorted() -> None:
    assert tokenrelay.__all__ == sorted(tokenrelay.__all__)


def test_all_has_no_duplicates_and_the_documented_names() -> None:
    assert len(set(tokenrelay.__all__)) == len(tokenrelay.__all__)
    assert set(tokenrelay.__all__) == EXPECTED_NAMES


@pytest.mark.parametrize("name", sorted(EXPECTED_NAMES))
def test_every_public_name_is_importable(name: str) -> None:
    obj = getattr(tokenrelay, name)
    assert obj is not None
    namespace: dict[str, object] = {}
    exec(f"from tokenrelay import {name}", namespace)
    assert namespace[name] is obj


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from tokenrelay import *", namespace)
    namespace.pop("__builtins__", None)
    assert set(namespace) == set(tokenrelay.__all__)


def test_public_callables_are_documented() -> None:
    for name in tokenrelay.__all__:
        obj = getattr(tokenrelay, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert inspect.getdoc(obj), f"{name} has no docstring"


@pytest.mark.parametrize(
    ("module", "names"), [("tokenrelay.client", CLIENT_NAMES), ("tokenrelay.sse", SSE_NAMES)]
)
def test_submodule_surfaces(module: str, names: set[str]) -> None:
    namespace = importlib.import_module(module)
    assert namespace.__all__ == sorted(names)
    for name in namespace.__all__:
        obj = getattr(namespace, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert inspect.getdoc(obj), f"{module}.{name} has no docstring"


def test_client_errors_are_tokenrelay_errors() -> None:
    from tokenrelay import client

    for error in (client.IncompleteStreamError, client.TokenrelayHTTPError, client.TokenrelayConnectionError):
        assert issubclass(error, client.TokenrelayClientError)
    assert issubclass(client.TokenrelayClientError, tokenrelay.TokenrelayError)


def test_error_hierarchy() -> None:
    assert issubclass(tokenrelay.ConfigError, tokenrelay.TokenrelayError)
    assert issubclass(tokenrelay.BackendError, tokenrelay.TokenrelayError)
    assert issubclass(tokenrelay.TokenrelayError, Exception)


def test_scripted_backend_is_public_in_testing_but_not_top_level() -> None:
    from tokenrelay.testing import ScriptedBackend

    assert issubclass(ScriptedBackend, tokenrelay.Backend)
    assert "ScriptedBackend" not in tokenrelay.__all__


# --------------------------------------------------------------------- the default model


def test_default_model_string_is_llamacpp(clean_env: dict[str, str]) -> None:
    assert Settings().model == "llamacpp"
    assert Settings.from_env().model == "llamacpp"


def test_load_backend_defaults_to_the_embedded_model_without_loading_it(clean_env: dict[str, str]) -> None:
    from tokenrelay.backends.llamacpp import DEFAULT_MODEL_FILE, LlamaCppBackend
    from tokenrelay.testing import ScriptedBackend

    backend = load_backend()
    assert isinstance(backend, LlamaCppBackend)
    assert not isinstance(backend, ScriptedBackend)
    assert backend.name == "llamacpp"
    assert backend.model_path.name == DEFAULT_MODEL_FILE
    assert backend.model_path.is_file()
    assert backend.tokens_generated == 0


def test_bare_llamacpp_string_is_the_same_default(clean_env: dict[str, str]) -> None:
    from tokenrelay.backends.llamacpp import LlamaCppBackend, default_model_path

    backend = load_backend("llamacpp", Settings())
    assert isinstance(backend, LlamaCppBackend)
    assert backend.model_path == default_model_path()


def test_cli_default_model_is_llamacpp(clean_env: dict[str, str]) -> None:
    from tokenrelay.cli import _settings, build_parser

    for argv in (["ask", "hi"], ["chat"], ["serve"]):
        assert _settings(build_parser().parse_args(argv)).model == "llamacpp"


def test_default_selection_never_touches_the_test_double(clean_env: dict[str, str]) -> None:
    """In a fresh interpreter: importing tokenrelay and picking the default backend neither
    imports the scripted backend nor loads llama.cpp (constructing is not loading)."""
    code = (
        "import json, sys, tokenrelay\n"
        "b = tokenrelay.load_backend()\n"
        "print(json.dumps({'type': type(b).__name__,"
        " 'testing': 'tokenrelay.testing' in sys.modules,"
        " 'llama_cpp': any(m == 'llama_cpp' or m.startswith('llama_cpp.') for m in sys.modules)}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=clean_env, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"type": "LlamaCppBackend", "testing": False, "llama_cpp": False}
