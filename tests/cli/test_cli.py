"""The `tokenrelay` command, run as a real subprocess: answer on stdout, diagnostics on stderr,
one-line errors with a non-zero exit, Ctrl-C, sessions. Multi-step agent output (tool calls
with `--steps`) is checked in-process, since a `scripted:` model string holds one reply."""

from __future__ import annotations

import asyncio
import io
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

import tokenrelay.backends as backends
from cli_helpers import ERROR_PREFIX, assert_one_line_error, cli, final, history, make_env
from cli_helpers import render as render_screen
from tokenrelay.agent.loop import Agent
from tokenrelay.cli import main
from tokenrelay.cli.printer import TerminalPrinter
from tokenrelay.events import (
    AnswerDelta,
    Event,
    Narration,
    RunError,
    RunFinished,
    RunStarted,
    ToolCallFinished,
    ToolCallStarted,
)
from tokenrelay.testing import ScriptedBackend


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return make_env(tmp_path)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    """The same environment for in-process runs of `main`, with an empty standard input."""
    for name in list(os.environ):
        if name.startswith(("TOKENRELAY_", "OPENAI_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_DATA_HOME", env["XDG_DATA_HOME"])
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))


# --------------------------------------------------------------------- answers


def test_plain_prints_exactly_the_model_text(env: dict[str, str]) -> None:
    result = cli(env, "ask", "--plain", "--model", "scripted:Hello", "hi")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "Hello\n"
    assert result.stderr == ""


def test_agent_prints_only_the_final_answer(env: dict[str, str]) -> None:
    result = cli(env, "ask", "--model", final("The capital of France is Paris."), "capital of France?")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "The capital of France is Paris.\n"
    assert result.stderr == ""
    assert "action" not in result.stdout


def test_japanese_answer_is_printed_intact(env: dict[str, str]) -> None:
    result = cli(env, "ask", "--model", final("東京は日本の首都です。🗼"), "日本の首都は？")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "東京は日本の首都です。🗼\n"


def test_json_prints_one_event_per_line(env: dict[str, str]) -> None:
    result = cli(env, "ask", "--json", "--model", final("hi there, 世界"), "greet me")
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith("\n")
    lines = result.stdout.splitlines()
    events = [json.loads(line) for line in lines]
    assert all(isinstance(e, dict) for e in events)
    assert events[0]["type"] == "run_started"
    assert events[-1]["type"] == "run_finished"
    assert [e["type"] for e in events].count("run_started") == 1
    assert [e["type"] for e in events].count("run_finished") == 1
    deltas = "".join(e["text"] for e in events if e["type"] == "answer_delta")
    assert deltas == events[-1]["answer"] == "hi there, 世界"
    assert "世界" in result.stdout  # not \u-escaped
    assert result.stderr == ""


def test_json_plain_run(env: dict[str, str]) -> None:
    result = cli(env, "ask", "--json", "--plain", "--model", "scripted:abcdefgh", "x")
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["type"] for e in events] == ["run_started", "answer_delta", "answer_delta", "run_finished"]
    assert events[0]["model"] == "scripted"
    assert events[-1]["answer"] == "abcdefgh"


def test_json_failed_run_ends_with_an_error_event(env: dict[str, str]) -> None:
    result = cli(
        env, "ask", "--json", "--plain", "--model", "openai:x", "--base-url", "http://127.0.0.1:9/v1", "x"
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert events[0]["type"] == "run_started"
    assert events[-1]["type"] == "error"
    assert events[-1]["code"] == "backend"


def test_prompt_from_stdin(env: dict[str, str], tmp_path: Path) -> None:
    result = cli(env, "ask", "-", "--plain", "--model", "scripted:from stdin", stdin="what is up?\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "from stdin\n"
    # the question really came from stdin: it is what the session stored
    db = tmp_path / "stdin.db"
    question = "二つの質問\nsecond line\n"
    result = cli(env, "ask", "-", "--session", "s", "--db", str(db), "--model", final("ok"), stdin=question)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok\n"
    (turn,) = history(db, "s")
    assert turn.user_text.strip() == question.strip()


def test_piped_text_comes_before_the_argument_as_in_llm(env: dict[str, str], tmp_path: Path) -> None:
    """`cat notes.md | tokenrelay ask "summarise"`: llm's rule, piped text + " " + argument,
    with the piped text unstripped."""
    db = tmp_path / "pipe.db"
    notes = "  indented code\n二行目\n"
    result = cli(env, "ask", "summarise", "-s", "p", "--db", str(db), "--model", final("ok"), stdin=notes)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok\n"
    (turn,) = history(db, "p")
    assert turn.user_text == notes + " summarise"


def test_piped_text_alone_is_the_prompt(env: dict[str, str], tmp_path: Path) -> None:
    db = tmp_path / "pipe.db"
    result = cli(env, "ask", "-s", "p", "--db", str(db), "--model", final("ok"), stdin="just this\n")
    assert result.returncode == 0, result.stderr
    assert [t.user_text for t in history(db, "p")] == ["just this\n"]


# --------------------------------------------------------------------- usage


def test_version(env: dict[str, str]) -> None:
    from importlib.metadata import version

    result = cli(env, "--version")
    assert result.returncode == 0
    assert result.stdout == f"tokenrelay {version('tokenrelay')}\n"
    assert result.stderr == ""


def test_bare_command_prints_the_usage_and_exits_2(env: dict[str, str]) -> None:
    """As click groups (llm's) do since click 8.2: the help on stderr and the usage-error status
    (git exits non-zero too); stdout stays empty for scripts."""
    result = cli(env)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("usage: tokenrelay")
    for command in ("ask", "chat", "sessions", "serve", "stream", "completion"):
        assert f"    {command}" in result.stderr
    assert "Traceback" not in result.stderr


def test_help_is_on_stdout_with_status_0(env: dict[str, str]) -> None:
    result = cli(env, "ask", "--help")
    assert result.returncode == 0
    assert "--attach" in result.stdout and "--continue" in result.stdout
    assert result.stderr == ""


def test_tokenrelay_db_takes_a_bare_path_like_db(env: dict[str, str], tmp_path: Path) -> None:
    """TOKENRELAY_DB=PATH and --db PATH name the same SQLite file, relative to the working
    directory, for ask and for sessions."""
    by_env = cli({**env, "TOKENRELAY_DB": "data/env.db"}, "ask", "-s", "e", "--model", final("one"), "q")
    by_flag = cli(env, "ask", "-s", "f", "--db", "data/flag.db", "--model", final("two"), "q")
    assert by_env.returncode == 0, by_env.stderr
    assert by_flag.returncode == 0, by_flag.stderr
    assert [t.answer for t in history(tmp_path / "data" / "env.db", "e")] == ["one"]
    assert [t.answer for t in history(tmp_path / "data" / "flag.db", "f")] == ["two"]
    assert not (tmp_path / "xdg" / "tokenrelay").exists()
    listed = cli({**env, "TOKENRELAY_DB": "data/env.db"}, "sessions", "--ids")
    assert listed.stdout == "e\n"
    assert cli(env, "sessions", "--ids", "--db", "data/flag.db").stdout == "f\n"


# --------------------------------------------------------------------- sessions


def test_session_continues_across_invocations(env: dict[str, str], tmp_path: Path) -> None:
    db = tmp_path / "data" / "sessions.db"
    first = cli(
        env,
        "ask",
        "--session",
        "trip",
        "--db",
        str(db),
        "--model",
        final("Noted: Kyoto."),
        "I am going to Kyoto.",
    )
    assert first.returncode == 0, first.stderr
    assert first.stdout == "Noted: Kyoto.\n"
    second = cli(
        env,
        "ask",
        "-s",
        "trip",
        "--db",
        str(db),
        "--model",
        final("You are going to Kyoto."),
        "Where am I going?",
    )
    assert second.returncode == 0, second.stderr
    turns = history(db, "trip")
    assert [(t.user_text, t.answer, t.status) for t in turns] == [
        ("I am going to Kyoto.", "Noted: Kyoto.", "complete"),
        ("Where am I going?", "You are going to Kyoto.", "complete"),
    ]
    assert not (tmp_path / "xdg" / "tokenrelay").exists()  # --db was used, not the default


def test_no_store_keeps_nothing(env: dict[str, str], tmp_path: Path) -> None:
    result = cli(env, "ask", "--no-store", "--model", final("ok"), "hello")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok\n"
    assert not (tmp_path / "xdg" / "tokenrelay").exists()


def test_second_run_sends_the_first_turn_to_the_model(
    clean_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """In process, with a recording backend: the model's second call sees the first turn."""
    recorder = ScriptedBackend(
        replies=[
            json.dumps({"action": "Final Answer", "action_input": "Nice to meet you, Aiko."}),
            json.dumps({"action": "Final Answer", "action_input": "Your name is Aiko."}),
        ]
    )
    monkeypatch.setattr(backends, "_REGISTRY", {**backends._REGISTRY, "rec": lambda arg, s: recorder})
    db = str(tmp_path / "mem.db")
    assert main(["ask", "--session", "s1", "--db", db, "--model", "rec", "My name is Aiko."]) == 0
    assert main(["ask", "--session", "s1", "--db", db, "--model", "rec", "What is my name?"]) == 0
    out = capsys.readouterr().out
    assert out == "Nice to meet you, Aiko.\nYour name is Aiko.\n"
    second_call = [(m.role, m.content) for m in recorder.calls[1].messages]
    assert ("user", "My name is Aiko.") in second_call
    assert ("assistant", "Nice to meet you, Aiko.") in second_call
    assert second_call[-1] == ("user", "What is my name?")
    first_call = [(m.role, m.content) for m in recorder.calls[0].messages]
    assert ("user", "What is my name?") not in first_call


# --------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("args", "contains", "code"),
    [
        (["ask", "q", "--model", "nope:x"], "unknown model backend 'nope'", 1),
        (["ask", "q", "--model", "openai:x", "--base-url", "http://127.0.0.1:9/v1"], "127.0.0.1:9", 1),
        (
            ["ask", "q", "--plain", "--model", "openai:x", "--base-url", "http://127.0.0.1:9/v1"],
            "127.0.0.1:9",
            1,
        ),
        (["ask", "q", "--model", "openai:x", "--base-url", "not a url"], "base URL", 1),
        (["ask", "q", "--model", "scripted:x", "--temperature", "9"], "temperature", 1),
        (["ask", "q", "--model", "scripted:x", "--temperature", "nan"], "temperature", 1),
        (["ask", "q", "--model", "scripted:x", "--max-tokens", "0"], "max_tokens", 1),
        (["ask", "q", "--model", "scripted:x", "--max-tokens", "lots"], "--max-tokens", 2),
        (["ask", "q", "--model", "scripted:x", "--tool-protocol", "magic"], "--tool-protocol", 2),
        (["ask", "", "--model", "scripted:x"], "empty", 1),
        (["ask", "   \n", "--model", "scripted:x"], "empty", 1),
        (["ask", "--model", "scripted:x"], "prompt", 2),
        (
            ["ask", "q", "--model", "scripted:x", "--session", "s", "--db", "redis://localhost/0"],
            "database",
            1,
        ),
        (["frobnicate"], "", 2),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_bad_input_is_one_line_on_stderr(
    env: dict[str, str], args: list[str], contains: str, code: int
) -> None:
    result = cli(env, *args)
    assert_one_line_error(result, contains=contains)
    assert result.returncode == code


def test_missing_gguf_names_the_path(env: dict[str, str], tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "model.gguf"
    assert_one_line_error(cli(env, "ask", "q", "--model", f"llamacpp:{missing}"), contains=str(missing))
    assert_one_line_error(
        cli(env, "ask", "q", "--plain", "--model", "llamacpp:/missing.gguf"), contains="/missing.gguf"
    )


def test_empty_prompt_on_stdin(env: dict[str, str]) -> None:
    assert_one_line_error(cli(env, "ask", "-", "--model", "scripted:x", stdin=""), contains="empty")


def test_unknown_backend_from_the_environment(env: dict[str, str]) -> None:
    result = cli({**env, "TOKENRELAY_MODEL": "bogus"}, "ask", "q")
    assert_one_line_error(result, contains="bogus")


def test_invalid_environment_value(env: dict[str, str]) -> None:
    result = cli({**env, "TOKENRELAY_MAX_TOKENS": "many"}, "ask", "q", "--model", "scripted:x")
    assert_one_line_error(result, contains="TOKENRELAY_MAX_TOKENS")


def test_api_key_never_appears_in_errors(env: dict[str, str]) -> None:
    secret = "sk-test-should-never-leak-42"
    result = cli(
        {**env, "OPENAI_API_KEY": secret},
        "ask",
        "q",
        "--model",
        "openai:x",
        "--base-url",
        "http://127.0.0.1:9/v1",
    )
    assert_one_line_error(result)
    assert secret not in result.stderr + result.stdout


def test_failed_run_after_partial_answer_keeps_stdout_clean() -> None:
    """In process: the partial answer ends with a newline on stdout; the error is one line on stderr."""
    out, err = io.StringIO(), io.StringIO()
    printer = TerminalPrinter(out, err, steps=False, verbose=False, as_json=False)
    for event in (
        RunStarted(run_id="r"),
        AnswerDelta(text="partial"),
        RunError(message="link lost", code="backend"),
    ):
        printer(event)
    assert out.getvalue() == "partial\n"
    assert err.getvalue() == f"{ERROR_PREFIX} link lost\n"


# --------------------------------------------------------------------- --steps (in process)


def agent_events() -> list[Event]:
    backend = ScriptedBackend(
        replies=[
            '{"action": "Calculator", "action_input": "2+3"}',
            '{"action": "Final Answer", "action_input": "It is 5."}',
        ]
    )

    async def run() -> list[Event]:
        return [e async for e in Agent(backend).run("what is 2+3?")]

    return asyncio.run(run())


def render(events: Sequence[Event], **flags: bool) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    printer = TerminalPrinter(out, err, **{"steps": False, "verbose": False, "as_json": False, **flags})
    for event in events:
        printer(event)
    return out.getvalue(), err.getvalue()


def test_steps_show_tool_calls_on_stderr_only() -> None:
    out, err = render(agent_events(), steps=True)
    assert out == "It is 5.\n"
    assert "→ Calculator(2+3)" in err
    assert "← Calculator: 5" in err
    assert err.index("→ Calculator") < err.index("← Calculator")


def test_without_steps_tool_calls_are_silent() -> None:
    out, err = render(agent_events())
    assert out == "It is 5.\n"
    assert err == ""


def test_steps_show_tool_errors() -> None:
    from tokenrelay.events import ToolCallFinished, ToolCallStarted

    events: list[Event] = [
        ToolCallStarted(call_id="c", name="Calculator", arguments={"expression": "1/0"}),
        ToolCallFinished(call_id="c", name="Calculator", error="division by zero"),
    ]
    out, err = render(events, steps=True)
    assert out == ""
    assert '→ Calculator({"expression": "1/0"})' in err
    assert "← Calculator: error: division by zero" in err


def test_verbose_shows_raw_model_output_on_stderr() -> None:
    from tokenrelay.events import ReasoningDelta

    out, err = render([ReasoningDelta(text='{"action": '), AnswerDelta(text="hi")], verbose=True)
    assert out == "hi"
    assert err == '{"action": '
    assert render([ReasoningDelta(text="hidden")])[1] == ""


def test_steps_flag_through_the_real_cli(env: dict[str, str]) -> None:
    """With one scripted reply there is no tool call, but --steps must not change stdout."""
    result = cli(env, "ask", "--steps", "--model", final("done"), "x")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "done\n"


NARRATED: list[Event] = [
    RunStarted(run_id="r"),
    AnswerDelta(text="Let me calculate that."),
    AnswerDelta(text="\n\n"),
    Narration(text="Let me calculate that.\n\n"),
    ToolCallStarted(call_id="c", name="Calculator", arguments="2+3"),
    ToolCallFinished(call_id="c", name="Calculator", result="5"),
    AnswerDelta(text="It is 5."),
    RunFinished(answer="It is 5."),
]


def test_narration_is_marked_with_steps() -> None:
    out, err = render(NARRATED, steps=True)
    assert out == "Let me calculate that.\n\nIt is 5.\n"  # every character once, in order
    assert err == "↑ narration\n→ Calculator(2+3)\n← Calculator: 5\n"


def test_narration_without_steps_is_just_text() -> None:
    assert render(NARRATED) == ("Let me calculate that.\n\nIt is 5.\n", "")


def test_json_prints_narration_like_every_event() -> None:
    out, err = render(NARRATED, as_json=True)
    events = [json.loads(line) for line in out.splitlines()]
    assert {"type": "narration", "text": "Let me calculate that.\n\n"} in events
    assert [e["type"] for e in events] == [e.type for e in NARRATED]
    assert err == ""


class FakeTerminal(io.StringIO):
    """One stream for stdout and stderr that says it is a terminal, as a terminal window is."""

    def isatty(self) -> bool:
        return True


def test_spinner_comes_back_after_narration_and_never_overlaps_text(monkeypatch: pytest.MonkeyPatch) -> None:
    """In process, with a fake terminal: the spinner shows while waiting (at the start, and
    after narration while the tool runs), says which step, and is erased before any text."""
    monkeypatch.setenv("TERM", "xterm")
    screen = FakeTerminal()
    printer = TerminalPrinter(screen, screen, steps=False, verbose=False, as_json=False)
    printer.spinner.delay = 0

    async def play() -> list[str]:
        shown: list[str] = []
        for event in NARRATED:
            printer(event)
            for _ in range(20):  # let the frame task draw
                await asyncio.sleep(0)
            shown.append(printer.spinner.label if printer.spinner.visible else "")
        return shown

    shown = asyncio.run(play())
    assert shown == ["thinking", "", "", "thinking", "calling Calculator", "thinking", "", ""]
    assert render_screen(screen.getvalue()) == ["Let me calculate that.", "", "It is 5."]


# --------------------------------------------------------------------- the real model


@pytest.mark.model
def test_real_model_smoke(env: dict[str, str]) -> None:
    result = cli(env, "ask", "--plain", "Say hello", "--max-tokens", "8", timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    assert result.stdout.endswith("\n")
    assert "Traceback" not in result.stderr


@pytest.mark.model
def test_ctrl_c_stops_generation_and_exits_130(env: dict[str, str]) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tokenrelay.cli",
            "ask",
            "--plain",
            "--max-tokens",
            "400",
            "Write a very long story about a dragon who learns to bake bread, with many chapters.",
        ],  # fmt: skip
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 120)
        assert ready, "no output from the model within 120 s"
        first = os.read(proc.stdout.fileno(), 4096)
        assert first, "stdout closed before any answer text"
        assert proc.poll() is None, "the run ended before Ctrl-C could be tested"
        proc.send_signal(signal.SIGINT)
        interrupted = time.monotonic()
        rest, stderr = proc.communicate(timeout=15)
        elapsed = time.monotonic() - interrupted
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    text = stderr.decode("utf-8", "replace")
    assert proc.returncode == 130, text
    assert "Traceback" not in text
    assert "interrupted" in text
    assert elapsed < 5, f"took {elapsed:.1f}s to stop after Ctrl-C"
    # generation stopped: nowhere near the 400 tokens asked for came out after the signal
    assert len((first + rest).decode("utf-8", "replace")) < 1200


@pytest.mark.parametrize(
    ("text", "columns", "shown"),
    [
        ("⠋ calling Calculator…", 80, "⠋ calling Calculator…"),
        ("⠋ calling Calculator…", 12, "⠋ calling C"),
        ("⠋ calling 計算機…", 14, "⠋ calling 計"),  # a wide character takes two columns
        ("⠋ thinking…", 1, "⠋"),  # always something, never more than fits
    ],
)
def test_the_spinner_line_never_wraps(text: str, columns: int, shown: str) -> None:
    """A wrapped line could not be erased with a carriage return."""
    from tokenrelay.cli.spinner import _fit

    assert _fit(text, columns) == shown
