"""Conversations in the terminal: every `ask`/`chat` is stored (unless --no-store), `-c`
continues the latest, `tokenrelay sessions` lists, shows and deletes them, and `-a FILE`
attaches a document as the server's PUT /sessions/{id}/document does."""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import pytest

import tokenrelay.backends as backends
from cli_helpers import (
    SLOW_CLI,
    assert_one_line_error,
    cli,
    data_db,
    final,
    history,
    make_env,
    session_ids,
    slow,
)
from tokenrelay.cli import main
from tokenrelay.cli.printer import CUT_OFF
from tokenrelay.testing import ScriptedBackend

TUTORIAL = "# LangChain の基本\n\nエージェントはツールを呼び出します。\n\n## メモリ\n\n会話を覚えます。\n"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return make_env(tmp_path)


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> ScriptedBackend:
    """In-process runs of `main` with model `rec`: a scripted backend that records every call."""
    for name in list(os.environ):
        if name.startswith(("TOKENRELAY_", "OPENAI_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_DATA_HOME", env["XDG_DATA_HOME"])
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    backend = ScriptedBackend(replies=[json.dumps({"action": "Final Answer", "action_input": "ok"})])
    monkeypatch.setattr(backends, "_REGISTRY", {**backends._REGISTRY, "rec": lambda arg, s: backend})
    return backend


def system_prompt(backend: ScriptedBackend, call: int) -> str:
    return backend.calls[call].messages[0].content


# --------------------------------------------------------------------- stored by default, -c


def test_ask_is_stored_and_continue_picks_up_the_latest(env: dict[str, str]) -> None:
    first = cli(env, "ask", "--model", final("Noted: Kyoto."), "I am going to Kyoto.")
    assert first.returncode == 0, first.stderr
    assert first.stderr == ""  # storing says nothing
    (trip,) = session_ids(data_db(env))
    follow = cli(env, "ask", "-c", "--model", final("To Kyoto."), "Where am I going?")
    assert follow.returncode == 0, follow.stderr
    assert follow.stdout == "To Kyoto.\n"
    assert [(t.user_text, t.answer) for t in history(data_db(env), trip)] == [
        ("I am going to Kyoto.", "Noted: Kyoto."),
        ("Where am I going?", "To Kyoto."),
    ]
    other = cli(env, "ask", "--model", final("Hi."), "A new topic")  # without -c: a new conversation
    assert other.returncode == 0, other.stderr
    newest, older = session_ids(data_db(env))
    assert older == trip and newest != trip
    assert cli(env, "ask", "--continue", "--model", final("ok"), "more").returncode == 0
    assert [t.user_text for t in history(data_db(env), newest)] == ["A new topic", "more"]


def test_continue_sends_the_earlier_turns_to_the_model(recorder: ScriptedBackend) -> None:
    assert main(["ask", "--model", "rec", "My name is Aiko."]) == 0
    assert main(["ask", "-c", "--model", "rec", "What is my name?"]) == 0
    second = [(m.role, m.content) for m in recorder.calls[1].messages]
    assert ("user", "My name is Aiko.") in second
    assert second[-1] == ("user", "What is my name?")


def test_continue_with_nothing_stored_starts_a_conversation(env: dict[str, str]) -> None:
    result = cli(env, "ask", "-c", "--model", final("ok"), "hello")
    assert result.returncode == 0, result.stderr
    (only,) = session_ids(data_db(env))
    assert [t.user_text for t in history(data_db(env), only)] == ["hello"]


def test_chat_continue_appends_to_the_latest_conversation(env: dict[str, str]) -> None:
    assert cli(env, "ask", "--model", final("ok"), "first").returncode == 0
    (latest,) = session_ids(data_db(env))
    chat = cli(env, "chat", "-c", "--model", final("ok"), stdin="second\n")
    assert chat.returncode == 0, chat.stderr
    assert f"session {latest}" in chat.stderr
    assert [t.user_text for t in history(data_db(env), latest)] == ["first", "second"]


@pytest.mark.parametrize(
    ("args", "contains"),
    [
        (["ask", "q", "--plain", "-c"], "--continue"),
        (["ask", "q", "--plain", "--session", "s"], "--session"),
        (["chat", "--plain", "-c"], "--continue"),
        (["ask", "q", "--no-store", "-c"], "--no-store"),
        (["ask", "q", "--no-store", "-s", "s"], "--no-store"),
        (["ask", "q", "-c", "-s", "s"], "not allowed with"),
        (["sessions", "show", "../etc"], "session id"),
        (["sessions", "delete"], "ID"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_conflicting_options_are_usage_errors(env: dict[str, str], args: list[str], contains: str) -> None:
    result = cli(env, *args, "--model", "scripted:x") if args[0] != "sessions" else cli(env, *args)
    assert_one_line_error(result, contains=contains)
    assert result.returncode == 2


# --------------------------------------------------------------------- tokenrelay sessions


def stored(env: dict[str, str], *turns: tuple[str, str], session: str) -> None:
    for question, answer in turns:
        result = cli(env, "ask", "-s", session, "--model", final(answer), question)
        assert result.returncode == 0, result.stderr


def test_sessions_lists_most_recent_first(env: dict[str, str]) -> None:
    stored(env, ("京都へ行きます", "いいですね"), session="kyoto")
    stored(env, ("What is 2+3?", "5"), session="maths")
    listed = cli(env, "sessions")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["maths", "kyoto"]
    assert lines[0].endswith("What is 2+3?") and lines[1].endswith("京都へ行きます")
    assert listed.stderr == ""
    assert cli(env, "sessions", "list").stdout == listed.stdout
    assert cli(env, "sessions", "list", "--limit", "1", "--ids").stdout == "maths\n"
    as_json = json.loads(cli(env, "sessions", "--json").stdout)
    assert [(s["id"], s["title"]) for s in as_json] == [
        ("maths", "What is 2+3?"),
        ("kyoto", "京都へ行きます"),
    ]
    assert json.loads(cli(env, "sessions", "list", "--json").stdout) == as_json


def test_sessions_show_prints_the_conversation(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "tutorial.md").write_text(TUTORIAL, encoding="utf-8")
    assert (
        cli(env, "ask", "-s", "doc", "-a", "tutorial.md", "--model", final("要約です"), "要約して").returncode
        == 0
    )
    stored(env, ("もっと詳しく", "はい"), session="doc")
    shown = cli(env, "sessions", "show", "doc")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == "session doc — 要約して"
    assert "2 turns" in lines[1] and f"document: tutorial.md ({len(TUTORIAL):,} characters)" in lines[1]
    assert lines[2:] == ["", "> 要約して", "要約です", "", "> もっと詳しく", "はい"]
    assert cli(env, "sessions", "show").stdout == shown.stdout  # the latest by default
    as_json = json.loads(cli(env, "sessions", "show", "doc", "--json").stdout)
    assert as_json["id"] == "doc"
    assert as_json["document"] == {"name": "tutorial.md", "chars": len(TUTORIAL)}
    assert [(t["user_text"], t["answer"], t["status"]) for t in as_json["turns"]] == [
        ("要約して", "要約です", "complete"),
        ("もっと詳しく", "はい", "complete"),
    ]


def test_sessions_show_marks_a_failed_turn(env: dict[str, str]) -> None:
    failed = cli(env, "ask", "-s", "f", "--model", "openai:x", "--base-url", "http://127.0.0.1:9/v1", "q")
    assert failed.returncode == 1
    shown = cli(env, "sessions", "show", "f").stdout.splitlines()
    assert shown[-2] == "> q"
    assert shown[-1].startswith("[failed: ") and "127.0.0.1:9" in shown[-1]


def test_sessions_show_lists_tool_steps_and_a_cut_off_answer(env: dict[str, str]) -> None:
    narrated = [
        ["Let me ", "check.\n", {"tool": "Calculator", "arguments": '{"expression": "6*7"}'}],
        ["It is 42."],
    ]
    asked = cli(env, "ask", "-s", "n", "--model", slow(0, *narrated, native=True), "6*7?", app=SLOW_CLI)
    assert asked.returncode == 0, asked.stderr
    assert asked.stdout == "Let me check.\n\nIt is 42.\n"
    cut = cli(env, "ask", "-s", "n", "--model", slow(0, ["A long answ", {"finish": "length"}], native=True),
              "more", app=SLOW_CLI)  # fmt: skip
    assert cut.returncode == 0, cut.stderr
    assert cut.stdout == "A long answ\n"
    assert cut.stderr == CUT_OFF + "\n"  # the terminal says the answer was cut off
    shown = cli(env, "sessions", "show", "n").stdout.splitlines()
    assert shown[2:] == [
        "",
        "> 6*7?",
        '  → Calculator({"expression": "6*7"}) ← 42',
        "It is 42.",
        "",
        "> more",
        "A long answ",
        "[cut off: the answer reached the token limit]",
    ]
    turns = json.loads(cli(env, "sessions", "show", "n", "--json").stdout)["turns"]
    assert [t["finish_reason"] for t in turns] == ["stop", "length"]
    assert [step["type"] for step in turns[0]["steps"]] == ["narration", "tool"]


def test_answer_policy_hold_prints_only_the_final_answer(env: dict[str, str]) -> None:
    narrated = [
        ["Let me ", "check.\n", {"tool": "Calculator", "arguments": '{"expression": "6*7"}'}],
        ["It is 42."],
    ]
    model = slow(0, *narrated, native=True)
    held = cli(env, "ask", "--answer-policy", "hold", "--model", model, "6*7?", app=SLOW_CLI)
    assert (held.returncode, held.stdout, held.stderr) == (0, "It is 42.\n", "")
    bad = cli(env, "ask", "--answer-policy", "later", "--model", model, "6*7?", app=SLOW_CLI)
    assert_one_line_error(bad, contains="--answer-policy")


def test_sessions_delete(env: dict[str, str]) -> None:
    stored(env, ("a", "1"), session="one")
    stored(env, ("b", "2"), session="two")
    deleted = cli(env, "sessions", "delete", "one")
    assert deleted.returncode == 0, deleted.stderr
    assert deleted.stdout == "deleted one\n"
    assert session_ids(data_db(env)) == ["two"]
    assert_one_line_error(cli(env, "sessions", "show", "one"), contains="no session 'one'")
    missing = cli(env, "sessions", "delete", "two", "nope")
    assert missing.returncode == 1
    assert missing.stdout == "deleted two\n"
    assert missing.stderr == "tokenrelay: error: no session 'nope'\n"
    assert session_ids(data_db(env)) == []


def test_sessions_on_a_fresh_machine_create_nothing(env: dict[str, str], tmp_path: Path) -> None:
    listed = cli(env, "sessions")
    assert (listed.returncode, listed.stdout, listed.stderr) == (0, "", "")
    assert cli(env, "sessions", "--json").stdout == "[]\n"
    assert_one_line_error(cli(env, "sessions", "show"), contains="no conversations yet")
    assert_one_line_error(cli(env, "sessions", "delete", "x"), contains="no session 'x'")
    assert not (tmp_path / "xdg" / "tokenrelay").exists()


# --------------------------------------------------------------------- -a / --attach


def test_attach_gives_the_model_the_document_in_a_stored_conversation(
    recorder: ScriptedBackend, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = tmp_path / "tutorial.md"
    doc.write_text(TUTORIAL, encoding="utf-8")
    assert main(["ask", "-a", str(doc), "--model", "rec", "要約してください"]) == 0
    assert main(["ask", "-c", "--model", "rec", "メモリとは？"]) == 0  # the follow-up still has it
    assert TUTORIAL in system_prompt(recorder, 0)
    assert TUTORIAL in system_prompt(recorder, 1)
    captured = capsys.readouterr()
    assert captured.out == "ok\nok\n"
    assert captured.err == ""


def test_attach_without_storing(recorder: ScriptedBackend, tmp_path: Path, env: dict[str, str]) -> None:
    doc = tmp_path / "notes.txt"
    doc.write_text("The launch code is 1234.", encoding="utf-8")
    assert main(["ask", "--no-store", "-a", str(doc), "--model", "rec", "what is the code?"]) == 0
    assert "The launch code is 1234." in system_prompt(recorder, 0)
    assert not data_db(env).exists()


def test_attach_a_notebook(recorder: ScriptedBackend, tmp_path: Path) -> None:
    notebook = {
        "cells": [
            {"cell_type": "markdown", "source": ["# Agents\n", "Tools and memory."]},
            {"cell_type": "code", "source": "agent.run('2+3')", "outputs": [{"text": "HIDDEN OUTPUT"}]},
        ]
    }
    doc = tmp_path / "talk.ipynb"
    doc.write_text(json.dumps(notebook), encoding="utf-8")
    assert main(["ask", "-a", str(doc), "--model", "rec", "summarise"]) == 0
    prompt = system_prompt(recorder, 0)
    assert "# Agents\nTools and memory." in prompt and "agent.run('2+3')" in prompt
    assert "HIDDEN OUTPUT" not in prompt


def test_a_document_that_does_not_fit_says_what_was_left_out(env: dict[str, str], tmp_path: Path) -> None:
    """The scripted model has the default 8192-token window; with max_tokens for the answer
    and 1024 in reserve, a few thousand tokens (about 4 bytes each) fit, not 160 KB."""
    paragraph = "とても長い段落です。\n"
    (tmp_path / "big.md").write_text("# 本\n" + paragraph * 4000, encoding="utf-8")
    result = cli(env, "ask", "-s", "big", "-a", "big.md", "--model", final("要約"), "要約してください")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "要約\n"  # the answer is still given
    (warning,) = result.stderr.splitlines()
    assert warning.startswith("tokenrelay: warning: big.md is about ")
    assert "everything after that was left out" in warning
    shown = json.loads(cli(env, "sessions", "show", "big", "--json").stdout)
    kept = shown["document"]["chars"]
    assert 0 < kept < len("# 本\n" + paragraph * 4000)
    assert f"the first {kept} of" in warning


@pytest.mark.parametrize(
    ("name", "content", "contains"),
    [
        ("missing.md", None, "cannot read"),
        ("slides.pdf", b"%PDF-1.7", "unsupported file type"),
        ("empty.md", b"  \n", "has no text"),
        ("latin1.txt", "café".encode("latin-1"), "not UTF-8"),
        ("nul.txt", b"a\x00b", "NUL"),
        ("bad.ipynb", b"{not json", "not a valid Jupyter notebook"),
    ],
)
def test_attach_errors_are_one_line(
    env: dict[str, str], tmp_path: Path, name: str, content: bytes | None, contains: str
) -> None:
    if content is not None:
        (tmp_path / name).write_bytes(content)
    result = cli(env, "ask", "-a", name, "--model", final("never"), "q")
    assert_one_line_error(result, contains=contains)
    assert result.returncode == 1
    assert not data_db(env).exists()  # checked before anything is stored


def test_plain_does_not_take_an_attachment(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "doc.md").write_text("text", encoding="utf-8")
    result = cli(env, "ask", "--plain", "-a", "doc.md", "--model", "scripted:x", "q")
    assert_one_line_error(result, contains="--attach")
    assert result.returncode == 2


def test_chat_attach(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "tutorial.md").write_text(TUTORIAL, encoding="utf-8")
    chat = cli(env, "chat", "-s", "c", "-a", "tutorial.md", "--model", final("ok"), stdin="要約して\n")
    assert chat.returncode == 0, chat.stderr
    shown = json.loads(cli(env, "sessions", "show", "c", "--json").stdout)
    assert shown["document"]["name"] == "tutorial.md"
    assert [t["user_text"] for t in shown["turns"]] == ["要約して"]
