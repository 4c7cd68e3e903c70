"""The CLI on a real terminal: a pseudo-terminal around a real `tokenrelay` process (the
command's own `main`, with a scripted model whose every reply starts late: the model thinking).

What a user relies on: while the answer is awaited a spinner on stderr says which step the
run is in, and it is erased before any answer text or step line, leaving nothing on screen;
Ctrl-C exits 130 at once, spinner erased; `chat` keeps a line history in the data directory
and still works where readline is missing. Shell completion is checked in a real bash.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cli_helpers import SLOW_CLI, Terminal, action, cli, data_db, final, history, make_env, session_ids, slow

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX")

ANSWER = "東京です。"
ERASE = "\r\x1b[K"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return make_env(tmp_path)


def run_on_terminal(env: dict[str, str], *args: str, term: str = "xterm") -> tuple[int, Terminal]:
    terminal = Terminal(env, *args, term=term)
    try:
        return terminal.wait(), terminal
    finally:
        terminal.close()


# --------------------------------------------------------------------- the spinner


def test_spinner_while_the_model_thinks_is_erased_before_the_answer(env: dict[str, str]) -> None:
    code, term = run_on_terminal(
        env, "ask", "--model", slow(1.0, action("Final Answer", ANSWER)), "日本の首都は？"
    )
    assert code == 0, term.text
    text = term.text
    first_answer = text.index(ANSWER[0])
    assert "thinking" in text[:first_answer]
    last_frame = text.rindex("thinking", 0, first_answer)
    assert ERASE in text[last_frame:first_answer]  # the line was erased before the answer began
    assert "thinking" not in text[first_answer:]
    assert term.screen() == [ANSWER]  # nothing left behind


def test_spinner_names_the_tool_and_steps_print_on_clean_lines(env: dict[str, str]) -> None:
    model = slow(1.0, action("Calculator", "2+3"), action("Final Answer", "It is 5."))
    code, term = run_on_terminal(env, "ask", "--steps", "--model", model, "what is 2+3?")
    assert code == 0, term.text
    text = term.text
    assert text.index("thinking") < text.index("calling Calculator") < text.index("→ Calculator(2+3)")
    assert term.screen() == ["→ Calculator(2+3)", "← Calculator: 5", "It is 5."]


def test_without_steps_only_the_spinner_shows_the_tool(env: dict[str, str]) -> None:
    model = slow(1.0, action("Calculator", "2+3"), action("Final Answer", "It is 5."))
    code, term = run_on_terminal(env, "ask", "--model", model, "what is 2+3?")
    assert code == 0, term.text
    assert "calling Calculator" in term.text
    assert term.screen() == ["It is 5."]


NATIVE_NARRATION = [
    ["Let me ", "check.\n", {"tool": "Calculator", "arguments": '{"expression": "6*7"}'}],
    ["It is ", "42."],
]


def test_narration_then_a_tool_then_the_answer_on_a_terminal(env: dict[str, str]) -> None:
    """Native tool calls through the real agent: the narration stays on screen, --steps marks
    it, and the spinner comes back while the tool runs and the model thinks again."""
    model = slow(1.0, *NATIVE_NARRATION, native=True)
    code, term = run_on_terminal(env, "ask", "--steps", "--model", model, "what is 6*7?")
    assert code == 0, term.text
    text = term.text
    assert text.index("check.") < text.index("thinking", text.index("check.")) < text.index("It is")
    assert term.screen() == [
        "Let me check.",
        "",
        "↑ narration",
        '→ Calculator({"expression": "6*7"})',
        "← Calculator: 42",
        "It is 42.",
    ]
    plain_code, plain = run_on_terminal(env, "ask", "--model", model, "what is 6*7?")
    assert plain_code == 0, plain.text
    assert plain.screen() == ["Let me check.", "", "It is 42."]


def test_no_spinner_when_stderr_is_not_a_terminal(env: dict[str, str]) -> None:
    model = slow(1.0, action("Calculator", "2+3"), action("Final Answer", "It is 5."))
    result = cli(env, "ask", "--model", model, "what is 2+3?", app=SLOW_CLI)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "It is 5.\n"
    assert result.stderr == ""


def test_no_spinner_on_a_dumb_terminal(env: dict[str, str]) -> None:
    code, term = run_on_terminal(
        env, "ask", "--model", slow(0.5, action("Final Answer", "ok")), "q", term="dumb"
    )
    assert code == 0
    assert term.text == "ok\r\n"


def test_ctrl_c_while_waiting_exits_130_at_once(env: dict[str, str]) -> None:
    term = Terminal(env, "ask", "--model", slow(120, action("Final Answer", "never")), "q")
    try:
        term.read_until(lambda shown: b"thinking" in shown)
        term.type("\x03")  # Ctrl-C, through the terminal's line discipline: a real SIGINT
        pressed = time.monotonic()
        code = term.wait(timeout=30)
        elapsed = time.monotonic() - pressed
    finally:
        term.close()
    assert code == 130, term.text
    assert elapsed < 5, f"took {elapsed:.1f}s to stop after Ctrl-C"
    screen = term.screen()
    assert screen[-1] == "tokenrelay: interrupted"
    assert not any("thinking" in line for line in screen)
    assert "Traceback" not in term.text


# --------------------------------------------------------------------- chat on a terminal


def chat_turn(term: Terminal, keys: str, answers_so_far: int) -> None:
    term.type(keys)
    term.read_until(lambda shown: shown.count(b"noted") > answers_so_far and shown.endswith(b"> "))


def test_chat_keeps_a_line_history_in_the_data_directory(env: dict[str, str]) -> None:
    model = slow(0.2, action("Final Answer", "noted"))
    term = Terminal(env, "chat", "--model", model)
    try:
        term.read_until(lambda shown: shown.endswith(b"> "))
        chat_turn(term, "my name is Ada\r", 0)
        term.type("\x04")  # Ctrl-D at an empty prompt: quit
        assert term.wait() == 0, term.text
    finally:
        term.close()
    history_file = Path(env["XDG_DATA_HOME"]) / "tokenrelay" / "chat_history"
    assert "my name is Ada" in history_file.read_text(encoding="utf-8")
    assert stat.S_IMODE(history_file.stat().st_mode) & 0o077 == 0  # what the user typed is private

    again = Terminal(env, "chat", "--model", model)
    try:
        again.read_until(lambda shown: shown.endswith(b"> "))
        chat_turn(again, "\x10\r", 0)  # Ctrl-P (previous line), Enter: the line comes back from history
        again.type("\x04")
        assert again.wait() == 0, again.text
    finally:
        again.close()
    latest = session_ids(data_db(env))[0]
    assert [t.user_text for t in history(data_db(env), latest)] == ["my name is Ada"]


def test_chat_works_without_readline(env: dict[str, str], tmp_path: Path) -> None:
    app = tmp_path / "no_readline.py"
    app.write_text(
        "import runpy, sys\n"
        "sys.modules['readline'] = None  # as on a Python built without it\n"
        f"sys.argv[0] = {SLOW_CLI!r}\n"
        f"runpy.run_path({SLOW_CLI!r}, run_name='__main__')\n"
    )
    term = Terminal(env, "chat", "--model", slow(0.2, action("Final Answer", "noted")), app=str(app))
    try:
        term.read_until(lambda shown: shown.endswith(b"> "))
        chat_turn(term, "hello\r", 0)
        term.type("\x04")
        assert term.wait() == 0, term.text
    finally:
        term.close()
    assert "Traceback" not in term.text
    assert not (Path(env["XDG_DATA_HOME"]) / "tokenrelay" / "chat_history").exists()


def test_ctrl_c_at_the_chat_prompt_exits_130_at_once(env: dict[str, str]) -> None:
    term = Terminal(env, "chat", "--model", slow(0.2, action("Final Answer", "noted")))
    try:
        term.read_until(lambda shown: shown.endswith(b"> "))
        # as a person does: Ctrl-C once the typed text shows and readline waits for the next key
        term.type("half a line")
        term.read_until(lambda shown: shown.endswith(b"half a line"))
        term.wait_reading()
        term.type("\x03")
        pressed = time.monotonic()
        code = term.wait(timeout=30)
        elapsed = time.monotonic() - pressed
    finally:
        term.close()
    assert code == 130, term.text
    assert elapsed < 5, f"took {elapsed:.1f}s to stop after Ctrl-C"
    assert term.screen()[-1] == "tokenrelay: interrupted"


# --------------------------------------------------------------------- shell completion

BASH_COMPLETE = r"""
source "$1"
COMP_LINE="$2"; COMP_POINT=${#COMP_LINE}
read -ra COMP_WORDS <<< "$COMP_LINE"
[[ "$COMP_LINE" == *" " ]] && COMP_WORDS+=("")
COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
COMPREPLY=()
_shtab_tokenrelay tokenrelay "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
printf '%s\n' "${COMPREPLY[@]}"
"""


@pytest.mark.skipif(not Path("/bin/bash").exists(), reason="needs bash")
def test_bash_completion_of_commands_options_and_session_ids(env: dict[str, str], tmp_path: Path) -> None:
    generated = cli(env, "completion", "bash")
    assert generated.returncode == 0, generated.stderr
    script = tmp_path / "tokenrelay.bash"
    script.write_text(generated.stdout)
    stored = cli(env, "ask", "--session", "trip-kyoto", "--model", final("ok"), "I am going to Kyoto")
    assert stored.returncode == 0, stored.stderr
    # the script runs `tokenrelay sessions list --ids`: the installed command, on PATH
    path_env = {**env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"}

    def complete(line: str) -> list[str]:
        done = subprocess.run(
            ["bash", "-c", BASH_COMPLETE, "complete", str(script), line],
            capture_output=True, text=True, env=path_env, cwd=tmp_path, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return [word for word in done.stdout.splitlines() if word]

    assert complete("tokenrelay ses") == ["sessions"]
    assert "--attach" in complete("tokenrelay ask --att")
    assert complete("tokenrelay sessions show ") == ["trip-kyoto"]
    assert complete("tokenrelay chat --session trip") == ["trip-kyoto"]
    assert sorted(complete("tokenrelay completion ")) == ["bash", "fish", "tcsh", "zsh"]


@pytest.mark.parametrize(("shell", "start"), [("zsh", "#compdef tokenrelay"), ("fish", ""), ("tcsh", "")])
def test_completion_scripts_for_other_shells(env: dict[str, str], shell: str, start: str) -> None:
    result = cli(env, "completion", shell)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(start) and "sessions" in result.stdout
    assert result.stderr == ""
