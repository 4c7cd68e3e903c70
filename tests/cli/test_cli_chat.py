"""`tokenrelay chat`: an interactive REPL with memory that survives restarts."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from tokenrelay.memory import open_store

ACTION = json.dumps({"action": "Final Answer", "action_input": "noted ✓"})


def _chat(tmp_path: Path, lines: str, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOKENRELAY_")}
    env["XDG_DATA_HOME"] = str(tmp_path)
    return subprocess.run(
        [sys.executable, "-m", "tokenrelay.cli", "chat", "--model", f"scripted:{ACTION}",
         "--db", str(tmp_path / "chat.db"), *extra],
        input=lines, capture_output=True, text=True, encoding="utf-8", env=env, timeout=60,
    )  # fmt: skip


def _turns(tmp_path: Path, session_id: str) -> list[tuple[str, str, str]]:
    async def read() -> list[tuple[str, str, str]]:
        store = open_store("sqlite:///" + str(tmp_path / "chat.db"))
        try:
            return [(t.user_text, t.answer, t.status) for t in await store.history(session_id)]
        finally:
            await store.close()

    return asyncio.run(read())


def test_chat_streams_answers_and_remembers_across_restarts(tmp_path: Path) -> None:
    first = _chat(tmp_path, "my name is Ada\n\nwhat is my name?\n")
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("noted ✓") == 2  # answers on stdout, one per line typed (blank skipped)
    assert "Traceback" not in first.stderr
    assert not (tmp_path / "tokenrelay" / "chat_history").exists()  # piped lines are not history
    session_id = first.stderr.split("session ", 1)[1].split()[0]  # announced on stderr
    assert _turns(tmp_path, session_id) == [
        ("my name is Ada", "noted ✓", "complete"),
        ("what is my name?", "noted ✓", "complete"),
    ]
    again = _chat(tmp_path, "still there?\n", "--session", session_id)
    assert again.returncode == 0, again.stderr
    assert [t[0] for t in _turns(tmp_path, session_id)] == [
        "my name is Ada",
        "what is my name?",
        "still there?",
    ]


def test_chat_rejects_a_malformed_session_id(tmp_path: Path) -> None:
    result = _chat(tmp_path, "", "--session", "../../etc")
    assert result.returncode == 2
    assert result.stderr.strip().startswith("tokenrelay: error:")
