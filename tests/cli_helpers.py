"""Shared by the CLI tests: an isolated environment, the command as a real subprocess (with
pipes or with a pseudo-terminal), scripted model strings, and reading what a run stored."""

from __future__ import annotations

import asyncio
import json
import os
import re
import select
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tokenrelay.memory import Turn, open_store

ERROR_PREFIX = "tokenrelay: error:"
SLOW_CLI = str(Path(__file__).parent / "apps" / "slow_cli.py")


def make_env(tmp_path: Path) -> dict[str, str]:
    """The environment for CLI subprocesses: no TOKENRELAY_*/OPENAI_* settings from the
    developer's shell, and all data under tmp_path (never the real home)."""
    out = {k: v for k, v in os.environ.items() if not k.startswith(("TOKENRELAY_", "OPENAI_"))}
    out["XDG_DATA_HOME"] = str(tmp_path / "xdg")
    out["HOME"] = str(tmp_path / "home")
    return out


def data_db(env: dict[str, str]) -> Path:
    """Where conversations go by default (the data directory)."""
    return Path(env["XDG_DATA_HOME"]) / "tokenrelay" / "tokenrelay.db"


def final(answer: str) -> str:
    """A scripted model string whose reply is the agent's final-answer action."""
    return "scripted:" + action("Final Answer", answer)


def action(name: str, argument: str) -> str:
    return json.dumps({"action": name, "action_input": argument}, ensure_ascii=False)


def slow(delay: float, *replies: str | list[Any], native: bool = False) -> str:
    """A model string for tests/apps/slow_cli.py: scripted replies, each after `delay` seconds
    (a reply is text, or a list of text pieces and `{"tool", "arguments"}` native calls)."""
    return "slow:" + json.dumps({"delay": delay, "replies": list(replies), "native": native})


def cli(
    env: dict[str, str], *args: str, stdin: str | None = None, timeout: float = 60, app: str | None = None
) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, app] if app else [sys.executable, "-m", "tokenrelay.cli"]
    return subprocess.run(
        [*command, *args],
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=env,
        cwd=Path(env["XDG_DATA_HOME"]).parent,
        timeout=timeout,
        check=False,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *, contains: str = "") -> str:
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(ERROR_PREFIX), result.stderr
    assert contains in lines[0]
    assert result.stdout == ""
    return lines[0]


def history(db: Path | str, session_id: str) -> list[Turn]:
    async def read() -> list[Turn]:
        store = open_store(str(db))
        try:
            return await store.history(session_id)
        finally:
            await store.close()

    return asyncio.run(read())


def session_ids(db: Path | str) -> list[str]:
    """Every session id in `db`, most recently updated first."""

    async def read() -> list[str]:
        store = open_store(str(db))
        try:
            return [s.id for s in await store.list_sessions()]
        finally:
            await store.close()

    return asyncio.run(read())


class Terminal:
    """A command on a pseudo-terminal: stdin, stdout and stderr are all the pty's slave side,
    as in a real terminal window; `transcript` is every byte it wrote, in order."""

    def __init__(self, env: dict[str, str], *args: str, app: str = SLOW_CLI, term: str = "xterm") -> None:
        import pty

        master, slave = pty.openpty()
        self.master = master
        self.proc = subprocess.Popen(
            [sys.executable, app, *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env={**env, "TERM": term},
            cwd=Path(env["XDG_DATA_HOME"]).parent,
            start_new_session=True,
            preexec_fn=_controlling_terminal,  # so Ctrl-C typed on it is a SIGINT, as in a shell
        )
        os.close(slave)
        self.transcript = b""

    def read_until(self, done: Callable[[bytes], bool], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not done(self.transcript):
            left = deadline - time.monotonic()
            assert left > 0, f"timed out; the terminal shows {self.transcript!r}"
            ready, _, _ = select.select([self.master], [], [], min(left, 0.5))
            if ready and not self._read():
                assert done(self.transcript), f"the command ended; the terminal shows {self.transcript!r}"
                return

    def _read(self) -> bool:
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: every slave descriptor is closed
            return False
        self.transcript += data
        return bool(data)

    def type(self, keys: str) -> None:
        os.write(self.master, keys.encode("utf-8"))

    def wait_reading(self, timeout: float = 30) -> None:
        """Wait until the command's main thread sleeps waiting for input (select/poll), as it is
        by the time a person's next key arrives. CPython holds a Ctrl-C that lands while readline
        is still handling the previous key until the next key (cpython#112585): a race no person
        wins, but a test that types at machine speed on a loaded machine does."""
        deadline = time.monotonic() + timeout
        proc = Path(f"/proc/{self.proc.pid}")
        while time.monotonic() < deadline:
            try:
                state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
                wchan = (proc / "wchan").read_text()
            except OSError:  # no /proc (macOS): the echo is the best sign there is
                return
            if state == "S" and ("poll" in wchan or "select" in wchan or wchan in ("", "0")):
                return
            time.sleep(0.01)
        raise AssertionError(f"never waited for input; the terminal shows {self.transcript!r}")

    def wait(self, timeout: float = 60) -> int:
        """The exit status, once the command has ended and everything it wrote was read."""
        try:
            self.read_until(lambda _: False, timeout)
        except AssertionError:
            pass
        code = self.proc.wait(timeout=timeout)
        os.close(self.master)
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    @property
    def text(self) -> str:
        return self.transcript.decode("utf-8", "replace")

    def screen(self) -> list[str]:
        return render(self.text)


def _controlling_terminal() -> None:
    import fcntl
    import termios

    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


_CONTROL = re.compile(r"\x1b\[K|\r|\n|\x1b\[[0-9;?]*[A-Za-z]|[^\r\n\x1b]+")


def render(text: str) -> list[str]:
    """The lines a terminal shows after `text`: carriage return, line feed and erase to end of
    line are applied; other escape sequences (readline's) are dropped. Enough to tell whether
    a spinner left anything behind."""
    lines = [""]
    col = 0
    for token in _CONTROL.findall(text):
        if token == "\r":
            col = 0
        elif token == "\n":
            lines.append("")
            col = 0
        elif token == "\x1b[K":
            lines[-1] = lines[-1][:col]
        elif token.startswith("\x1b"):
            continue
        else:
            line = lines[-1].ljust(col)
            lines[-1] = line[:col] + token + line[col + len(token) :]
            col += len(token)
    while lines and not lines[-1]:
        lines.pop()
    return lines
