"""The `tokenrelay` command: ask, chat, sessions, serve, stream, completion.

Answer text goes to stdout, flushed per delta; everything else (steps, errors, session ids,
the waiting spinner) goes to stderr. Errors are one line and a non-zero exit, never a
traceback: 1 for a failed run or bad configuration, 2 for bad usage (a bare `tokenrelay`
prints the help on stderr and exits 2, as click groups do since 8.2 and as `git` exits
non-zero), 130 for Ctrl-C (generation is stopped first).

This module is the parser and the dispatcher; each command lives in its own module:
`conversation` (ask, chat), `sessions`, `completion`; `printer` renders events.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any

from tokenrelay.config import Settings
from tokenrelay.errors import TokenrelayError

__all__ = ["build_parser", "main"]

_SESSION_ID = re.compile(r"[A-Za-z0-9_\-]{1,100}")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, exit 2, as argparse does, minus the usage dump
        print(f"tokenrelay: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def session_id(value: str) -> str:
    """An argparse type: a session id as the stores accept it."""
    if not _SESSION_ID.fullmatch(value):
        raise argparse.ArgumentTypeError("a session id takes letters, digits, '-' and '_' (at most 100)")
    return value


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tokenrelay")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "unknown"


def _model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        "-m",
        help="model string: llamacpp (default), hf:ALIAS or hf:OWNER/REPO/FILE.gguf (see `tokenrelay "
        "models`), llamacpp:PATH.gguf, openai:NAME",
    )
    p.add_argument(
        "--max-tokens", type=int, help=f"maximum tokens per model call (default {Settings.max_tokens})"
    )
    p.add_argument(
        "--temperature", type=float, help=f"sampling temperature, 0-2 (default {Settings.temperature})"
    )
    p.add_argument("--system", dest="system_prompt", help="system prompt")
    p.add_argument(
        "--base-url", dest="openai_base_url", help="OpenAI-compatible server URL (or OPENAI_BASE_URL)"
    )
    _db_option(p)


def _db_option(p: argparse.ArgumentParser, **kwargs: Any) -> None:
    p.add_argument("--db", help="session database: a SQLite path or URL (or TOKENRELAY_DB)", **kwargs)


def _agent_options(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--session", "-s", type=session_id, help="session id: continue (or start) a stored conversation"
    )
    which.add_argument(
        "--continue", "-c", dest="continue_", action="store_true", help="continue the latest conversation"
    )
    p.add_argument(
        "--attach", "-a", metavar="FILE", help="attach a document (text, Markdown, .ipynb) to the session"
    )
    p.add_argument("--steps", action="store_true", help="show tool calls and results on stderr")
    p.add_argument(
        "--plain", action="store_true", help="talk to the model directly: no agent, tools or memory"
    )
    p.add_argument("--tool-protocol", choices=["auto", "native", "json"], help="how the agent calls tools")
    p.add_argument(
        "--answer-policy",
        choices=["stream", "hold"],
        help="stream: text as the model writes it (default); hold: only the final answer, later",
    )
    p.add_argument(
        "--max-iterations",
        type=int,
        help=f"agent steps before early stopping (default {Settings.max_iterations})",
    )
    p.add_argument("--early-stopping-method", choices=["generate", "force"])
    p.add_argument("--verbose", "-v", action="store_true", help="print the agent's raw steps on stderr")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tokenrelay", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    ask = sub.add_parser("ask", help="ask once and stream the answer to stdout")
    ask.add_argument(
        "prompt", nargs="?", help="what to ask ('-' reads standard input; piped text comes before it)"
    )
    _model_options(ask)
    _agent_options(ask)
    ask.add_argument(
        "--no-store", "-n", action="store_true", help="keep this conversation in memory only (not in --db)"
    )
    ask.add_argument("--json", action="store_true", help="one JSON event per line instead of text")

    chat = sub.add_parser("chat", help="interactive chat with memory")
    _model_options(chat)
    _agent_options(chat)

    from tokenrelay.cli.sessions import add_parser as add_sessions_parser

    add_sessions_parser(sub, _db_option, session_id)

    from tokenrelay.cli.models import add_parser as add_models_parser

    add_models_parser(sub)

    serve = sub.add_parser("serve", help="run the HTTP server")
    _model_options(serve)
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8000)")
    serve.add_argument("--workers", type=int, help="worker processes (default 1; more need --redis)")
    serve.add_argument(
        "--redis", dest="redis_url", help="Redis URL shared by workers (or TOKENRELAY_REDIS_URL)"
    )
    serve.add_argument(
        "--log-level", choices=("debug", "info", "warning", "error", "critical"), help="default info"
    )

    stream = sub.add_parser("stream", help="stream an answer from a running tokenrelay server")
    stream.add_argument("prompt")
    stream.add_argument("--url", default="http://localhost:8000", help="server URL")
    stream.add_argument("--session", "-s", type=session_id, help="session id")
    stream.add_argument("--api-key", help="API key for the server (or TOKENRELAY_API_KEY)")

    completion = sub.add_parser(
        "completion", help="print a shell completion script", description=_completion_help()
    )
    completion.add_argument("shell", choices=["bash", "zsh", "tcsh", "fish"])
    return parser


def _completion_help() -> str:
    return (
        "Print a completion script. bash: `tokenrelay completion bash > "
        "~/.local/share/bash-completion/completions/tokenrelay`; zsh: `tokenrelay completion zsh > "
        "~/.zfunc/_tokenrelay` with ~/.zfunc on $fpath before compinit."
    )


def _settings(args: argparse.Namespace) -> Settings:
    names = (
        "model", "max_tokens", "temperature", "system_prompt", "openai_base_url", "db", "tool_protocol",
        "max_iterations", "early_stopping_method", "answer_policy", "host", "port", "workers", "redis_url",
        "log_level",
    )  # fmt: skip
    return Settings.from_env(**{name: getattr(args, name, None) for name in names})


def _run(command: Callable[[], int]) -> int:
    try:
        return command()
    except KeyboardInterrupt:
        # the event loop cancelled the running task first, which closed the backend stream
        print("\ntokenrelay: interrupted", file=sys.stderr, flush=True)
        return 130
    except TokenrelayError as exc:
        print(f"tokenrelay: error: {exc}", file=sys.stderr, flush=True)
        return 1


def _dispatch(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if args.command in ("ask", "chat"):
        from tokenrelay.cli import conversation
        from tokenrelay.cli.models import notice_once

        request = conversation.prepare(args, parser)  # usage errors and file reading, before any model
        settings = _settings(args)
        if not getattr(args, "json", False):
            notice_once(settings.model)
        if args.command == "ask":
            return _run(lambda: asyncio.run(conversation.ask(request, settings)))
        return _run(lambda: conversation.chat(request, settings))
    if args.command == "sessions":
        from tokenrelay.cli.sessions import run as run_sessions

        settings = _settings(args)
        return _run(lambda: asyncio.run(run_sessions(args, settings)))
    if args.command == "models":
        from tokenrelay.cli.models import run as run_models

        return run_models(args)
    if args.command == "serve":
        from tokenrelay.server import serve

        return serve(_settings(args))
    if args.command == "completion":
        from tokenrelay.cli.completion import script

        sys.stdout.write(script(parser, args.shell))
        return 0
    from tokenrelay.client import stream_cli

    return stream_cli(args.url, args.prompt, session_id=args.session, api_key=args.api_key)


def main(argv: Sequence[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):  # a non-UTF-8 terminal gets '?' rather than a crash
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="replace")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # bare `tokenrelay`: the help, as a usage error
        parser.print_help(sys.stderr)
        return 2
    try:
        return _dispatch(parser, args)
    except TokenrelayError as exc:
        print(f"tokenrelay: error: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug: still one line, with the traceback only on request
        if os.environ.get("TOKENRELAY_DEBUG"):
            raise
        print(f"tokenrelay: internal error: {type(exc).__name__}: {exc} (TOKENRELAY_DEBUG=1 shows more)",
              file=sys.stderr, flush=True)  # fmt: skip
        return 1
