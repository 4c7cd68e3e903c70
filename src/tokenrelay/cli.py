"""The `tokenrelay` command: ask, chat, serve, stream.

Answer text goes to stdout, flushed per delta; everything else (steps, errors, session ids)
goes to stderr. Errors are one line and a non-zero exit, never a traceback: 1 for a failed
run or bad configuration, 2 for bad usage, 130 for Ctrl-C (generation is stopped first).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import Any, TextIO

from tokenrelay.config import Settings
from tokenrelay.errors import ConfigError, TokenrelayError
from tokenrelay.events import (
    AnswerDelta,
    Event,
    ReasoningDelta,
    RunError,
    RunFinished,
    ToolCallFinished,
    ToolCallStarted,
    event_to_dict,
)

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, exit 2, as argparse does, minus the usage dump
        print(f"tokenrelay: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", "-m", help="model string: llamacpp (default), llamacpp:PATH.gguf, openai:NAME")
    p.add_argument("--max-tokens", type=int, help="maximum tokens per model call (default 512)")
    p.add_argument("--temperature", type=float, help="sampling temperature, 0-2 (default 0.7)")
    p.add_argument("--system", dest="system_prompt", help="system prompt")
    p.add_argument(
        "--base-url", dest="openai_base_url", help="OpenAI-compatible server URL (or OPENAI_BASE_URL)"
    )
    p.add_argument("--db", help="session database: a SQLite path or URL (or TOKENRELAY_DB)")


def _agent_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--session", "-s", help="session id: continue (or start) a stored conversation")
    p.add_argument("--steps", action="store_true", help="show tool calls and results on stderr")
    p.add_argument(
        "--plain", action="store_true", help="talk to the model directly: no agent, tools or memory"
    )
    p.add_argument("--tool-protocol", choices=["auto", "native", "json"], help="how the agent calls tools")
    p.add_argument("--max-iterations", type=int, help="agent steps before early stopping (default 3)")
    p.add_argument("--early-stopping-method", choices=["generate", "force"])
    p.add_argument("--verbose", "-v", action="store_true", help="print the agent's raw steps on stderr")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tokenrelay", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    ask = sub.add_parser("ask", help="ask once and stream the answer to stdout")
    ask.add_argument("prompt", help="what to ask ('-' reads standard input)")
    _model_options(ask)
    _agent_options(ask)
    ask.add_argument("--json", action="store_true", help="one JSON event per line instead of text")

    chat = sub.add_parser("chat", help="interactive chat with memory")
    _model_options(chat)
    _agent_options(chat)

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
    stream.add_argument("--session", "-s", help="session id")
    stream.add_argument("--api-key", help="API key for the server (or TOKENRELAY_API_KEY)")
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    names = (
        "model", "max_tokens", "temperature", "system_prompt", "openai_base_url", "db", "tool_protocol",
        "max_iterations", "early_stopping_method", "host", "port", "workers", "redis_url", "log_level",
    )  # fmt: skip
    overrides = {name: getattr(args, name, None) for name in names}
    if overrides["db"] and "://" not in overrides["db"]:
        overrides["db"] = "sqlite:///" + overrides["db"]
    return Settings.from_env(**overrides)


class _TerminalPrinter:
    """Renders events for a terminal: answer on `out`, steps and errors on `err`."""

    def __init__(self, out: TextIO, err: TextIO, *, steps: bool, verbose: bool, as_json: bool) -> None:
        self.out, self.err = out, err
        self.steps, self.verbose, self.as_json = steps, verbose, as_json
        self.wrote_answer = False

    def __call__(self, event: Event) -> None:
        if self.as_json:
            self.out.write(json.dumps(event_to_dict(event), ensure_ascii=False) + "\n")
            self.out.flush()
            if isinstance(event, RunError):
                print(f"tokenrelay: error: {event.message}", file=self.err, flush=True)
            return
        if type(event) is AnswerDelta:
            self.out.write(event.text)
            self.out.flush()
            self.wrote_answer = True
        elif isinstance(event, ReasoningDelta):
            if self.verbose:
                self.err.write(event.text)
                self.err.flush()
        elif isinstance(event, ToolCallStarted):
            if self.steps or self.verbose:
                args = event.arguments if isinstance(event.arguments, str) else json.dumps(event.arguments)
                print(f"\n→ {event.name}({args})", file=self.err, flush=True)
        elif isinstance(event, ToolCallFinished):
            if self.steps or self.verbose:
                shown = event.result if event.error is None else f"error: {event.error}"
                print(f"← {event.name}: {shown}", file=self.err, flush=True)
        elif isinstance(event, RunFinished):
            self.out.write("\n")
            self.out.flush()
        elif isinstance(event, RunError):
            if self.wrote_answer:
                self.out.write("\n")
                self.out.flush()
            print(f"tokenrelay: error: {event.message}", file=self.err, flush=True)


async def _drain(events: AsyncIterator[Event], sink: Callable[[Event], None]) -> int:
    status = 1
    async for event in events:
        sink(event)
        if isinstance(event, RunFinished):
            status = 0
    return status


def _run(coro_factory: Callable[[], Coroutine[Any, Any, int]]) -> int:
    try:
        return asyncio.run(coro_factory())
    except KeyboardInterrupt:
        # asyncio.run cancelled the main task first, which closed the backend stream
        print("\ntokenrelay: interrupted", file=sys.stderr, flush=True)
        return 130
    except TokenrelayError as exc:
        print(f"tokenrelay: error: {exc}", file=sys.stderr, flush=True)
        return 1


async def _ask(args: argparse.Namespace, settings: Settings) -> int:
    from tokenrelay.api import open_runner

    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    if not prompt.strip():
        raise ConfigError("the prompt is empty")
    printer = _TerminalPrinter(
        sys.stdout, sys.stderr, steps=args.steps, verbose=args.verbose, as_json=args.json
    )
    async with open_runner(settings, plain=args.plain, persistent=args.session is not None) as runner:
        return await _drain(runner.run(prompt, session_id=args.session, full=args.verbose), printer)


async def _chat(args: argparse.Namespace, settings: Settings) -> int:
    from tokenrelay.api import open_runner

    printer = _TerminalPrinter(sys.stdout, sys.stderr, steps=args.steps, verbose=args.verbose, as_json=False)
    async with open_runner(settings, plain=args.plain, persistent=True) as runner:
        session_id = await runner.ensure_session(args.session)
        print(f"tokenrelay chat — session {session_id} (Ctrl-D to quit)", file=sys.stderr, flush=True)
        while True:
            try:
                line = await asyncio.to_thread(input, "> ")
            except EOFError:
                print(file=sys.stderr)
                return 0
            if not line.strip():
                continue
            task = asyncio.create_task(
                _drain(runner.run(line, session_id=session_id, full=args.verbose), printer)
            )
            try:
                await task
            except asyncio.CancelledError:
                task.cancel()
                raise


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from tokenrelay.server import serve

    return serve(settings)


def _stream(args: argparse.Namespace) -> int:
    from tokenrelay.client import stream_cli

    return stream_cli(args.url, args.prompt, session_id=args.session, api_key=args.api_key)


def main(argv: Sequence[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):  # a non-UTF-8 terminal gets '?' rather than a crash
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="replace")
    args = build_parser().parse_args(argv)
    session = getattr(args, "session", None)
    if session is not None and not re.fullmatch(r"[A-Za-z0-9_\-]{1,100}", session):
        print(
            "tokenrelay: error: --session takes letters, digits, '-' and '_' (at most 100)", file=sys.stderr
        )
        return 2
    try:
        settings = _settings(args) if args.command != "stream" else None
        if args.command == "ask":
            assert settings is not None
            return _run(lambda: _ask(args, settings))
        if args.command == "chat":
            assert settings is not None
            return _run(lambda: _chat(args, settings))
        if args.command == "serve":
            assert settings is not None
            return _serve(args, settings)
        return _stream(args)
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
