"""`ask` and `chat`: questions answered in the terminal, in a stored conversation.

Where the question comes from (as in simonw's `llm`): the prompt argument; `-` reads standard
input as the whole prompt; when standard input is piped and a prompt is given too, the piped
text comes first and the argument follows after one space (`cat notes.md | tokenrelay ask
summarise`). Piped text is never stripped: indentation and trailing newlines are kept.

Where the conversation lives: each `ask` and `chat` is a session in the session database
(`--db`, TOKENRELAY_DB, or the data directory), so `-c` continues the latest one and
`tokenrelay sessions` lists them; `--session ID` continues (or starts) a named one; `ask
--no-store` keeps the conversation in memory only. `--plain` talks to the model alone: no
agent, no memory, so it takes none of these options.

`-a FILE` attaches a document to the conversation as the server's `PUT
/sessions/{id}/document` does (`extract_text`, `fit_document`, `set_document`); what did not
fit the model's context window is said on stderr, and the answer is still given.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from tokenrelay.api import Runner, open_runner
from tokenrelay.cli.history import enable_history
from tokenrelay.cli.printer import TerminalPrinter, drain
from tokenrelay.config import Settings, default_data_dir
from tokenrelay.documents import extract_text, fit_document
from tokenrelay.errors import ConfigError

__all__ = ["Request", "ask", "chat", "prepare", "read_document", "read_prompt"]

HISTORY_FILE = "chat_history"


@dataclass(frozen=True, kw_only=True)
class Request:
    """What `ask`/`chat` were asked to do, checked and read before any model is loaded."""

    prompt: str  # "" for chat
    document: tuple[str, str] | None  # (file name, text)
    session_id: str | None
    continue_latest: bool
    store: bool
    plain: bool
    steps: bool
    verbose: bool
    as_json: bool


def prepare(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Request:
    """Check the options (usage errors exit 2 through `parser.error`), read the prompt and the
    attached file (a missing or unreadable file is a `ConfigError`, exit 1)."""
    store = not getattr(args, "no_store", False)
    if args.plain:
        clashing = [
            flag
            for flag, used in (
                ("--session", args.session is not None),
                ("--continue", args.continue_),
                ("--attach", args.attach is not None),
            )
            if used
        ]
        if clashing:
            parser.error(f"--plain talks to the model alone and keeps no conversation: drop {clashing[0]}")
    if not store and (args.session is not None or args.continue_):
        parser.error("--no-store keeps nothing, so it cannot continue a stored conversation")
    prompt = ""
    if args.command == "ask":
        given = read_prompt(args.prompt, sys.stdin)
        if given is None:
            parser.error("ask needs a prompt: an argument, '-' for standard input, or piped text")
        if not given.strip():
            raise ConfigError("the prompt is empty")
        prompt = given
    return Request(
        prompt=prompt,
        document=read_document(args.attach) if args.attach is not None else None,
        session_id=args.session,
        continue_latest=args.continue_,
        store=store,
        plain=args.plain,
        steps=args.steps,
        verbose=args.verbose,
        as_json=getattr(args, "json", False),
    )


def read_prompt(argument: str | None, stdin: TextIO | None) -> str | None:
    """The prompt from the argument and standard input, combined as `llm` does; None when
    there is neither."""
    if argument == "-":
        return stdin.read() if stdin is not None else ""
    piped = stdin.read() if stdin is not None and not stdin.isatty() else ""
    if piped:
        return f"{piped} {argument}" if argument else piped
    return argument


def read_document(path: str) -> tuple[str, str]:
    """(file name, plain text) of a file to attach; `ConfigError` says what is wrong."""
    name = Path(path).name
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        content = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text: attach text, Markdown or a Jupyter notebook") from None
    if "\x00" in content:
        raise ConfigError(f"{path} contains NUL characters: attach a text file")
    try:
        text = extract_text(name, content)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if not text.strip():
        raise ConfigError(f"{path} has no text")
    return name, text


async def _conversation(runner: Runner, request: Request) -> str | None:
    """The session to answer in (None for --plain), with the document attached."""
    if request.plain:
        return None
    session_id: str | None = None
    if request.session_id is not None:
        session_id = await runner.ensure_session(request.session_id)
    elif request.continue_latest:
        latest = await runner.store.list_sessions(limit=1)
        session_id = latest[0].id if latest else None
    if session_id is None:
        session_id = await runner.ensure_session(None)
    if request.document is not None:
        name, text = request.document
        fitted = fit_document(name, text, runner.backend, max_tokens=runner.settings.max_tokens)
        await runner.store.set_document(
            session_id,
            name=name,
            text=fitted.text,
            total_chars=fitted.total_chars,
            total_tokens=fitted.total_tokens,
            budget_tokens=fitted.budget_tokens,
        )
        notice = fitted.notice()
        if notice:
            print(f"tokenrelay: warning: {notice}", file=sys.stderr, flush=True)
    return session_id


def _printer(request: Request) -> TerminalPrinter:
    return TerminalPrinter(
        sys.stdout, sys.stderr, steps=request.steps, verbose=request.verbose, as_json=request.as_json
    )


async def ask(request: Request, settings: Settings) -> int:
    persistent = request.store and not request.plain
    async with open_runner(settings, plain=request.plain, persistent=persistent) as runner:
        session_id = await _conversation(runner, request)
        # the session was just resolved (a chat's later turns re-check it: it may be deleted meanwhile)
        events = runner.run(request.prompt, session_id=session_id, full=request.verbose, session_ready=True)
        return await drain(events, _printer(request))


def chat(request: Request, settings: Settings) -> int:
    """The chat loop. Lines are read with `input()` in the main thread, outside the event loop,
    so readline gets Ctrl-C itself (the line is abandoned, the terminal restored, and the
    command exits 130 at once), while each answer runs on one event loop kept for the whole
    chat (the backend and the store stay open between turns)."""
    printer = _printer(request)
    with asyncio.Runner() as loop, contextlib.ExitStack() as cleanup:
        runner = loop.run(_open(settings, request, cleanup, loop))
        session_id = loop.run(_conversation(runner, request))
        what = f"session {session_id}" if session_id else "the model alone, no memory"
        print(f"tokenrelay chat — {what} (Ctrl-D to quit)", file=sys.stderr, flush=True)
        save_history = enable_history(default_data_dir() / HISTORY_FILE)
        if save_history is not None:
            cleanup.callback(save_history)
        while True:
            try:
                line = input("> ")
            except EOFError:
                print(file=sys.stderr)
                return 0
            if line.strip():
                loop.run(drain(runner.run(line, session_id=session_id, full=request.verbose), printer))


async def _open(
    settings: Settings, request: Request, cleanup: contextlib.ExitStack, loop: asyncio.Runner
) -> Runner:
    """Enter `open_runner` on `loop`; `cleanup` leaves it there again (also after Ctrl-C)."""
    manager = open_runner(settings, plain=request.plain, persistent=not request.plain)
    runner = await manager.__aenter__()
    cleanup.callback(lambda: loop.run(manager.__aexit__(None, None, None)))
    return runner
