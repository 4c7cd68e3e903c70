"""`tokenrelay sessions`: list, show and delete stored conversations.

`sessions` alone lists them, most recently updated first. Plain output is for people (one
line per session; a conversation as prompts and answers); `--json` is for programs;
`list --ids` prints ids only (shell completion uses it). The sessions shown are those without
an owner: the CLI's, and those of a server run without API keys (a session that an API key
owns belongs to that key). Reading never creates a database that does not exist yet.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tokenrelay.config import Settings
from tokenrelay.errors import ConfigError
from tokenrelay.memory import SessionInfo, SessionStore, Turn, open_store, sqlite_path_from_url

__all__ = ["add_parser", "run"]

DEFAULT_LIMIT = 20


def add_parser(
    sub: Any, db_option: Callable[..., None], session_id: Callable[[str], str]
) -> argparse.ArgumentParser:
    """The `sessions` parser. `--db`, `--json`, `--limit` and `--ids` work before or after the
    action (`sessions --json` and `sessions list --json`): on the actions they default to
    SUPPRESS, so an action's parser never overwrites what `sessions` parsed."""
    parser: argparse.ArgumentParser = sub.add_parser("sessions", help="list, show or delete conversations")
    _list_options(parser, db_option)
    actions = parser.add_subparsers(dest="action", metavar="ACTION", parser_class=type(parser))
    _list_options(actions.add_parser("list", help="list conversations (the default)"), db_option, SUPPRESS)
    show = actions.add_parser("show", help="print a conversation")
    show.add_argument("id", nargs="?", type=session_id, help="session id (default: the latest)")
    _common_options(show, db_option, SUPPRESS)
    delete = actions.add_parser("delete", help="delete conversations")
    delete.add_argument("ids", nargs="+", metavar="ID", type=session_id)
    _common_options(delete, db_option, SUPPRESS)
    return parser


SUPPRESS: dict[str, Any] = {"default": argparse.SUPPRESS}


def _common_options(p: argparse.ArgumentParser, db_option: Callable[..., None], extra: Any = None) -> None:
    db_option(p, **(extra or {}))
    p.add_argument("--json", action="store_true", help="JSON instead of text", **(extra or {}))


def _list_options(p: argparse.ArgumentParser, db_option: Callable[..., None], extra: Any = None) -> None:
    _common_options(p, db_option, extra)
    kwargs = extra or {}
    p.add_argument(
        "--limit", type=int, help=f"how many, most recent first (default {DEFAULT_LIMIT})", **kwargs
    )
    p.add_argument("--ids", action="store_true", help="session ids only, one per line", **kwargs)


def _existing_store(url: str) -> SessionStore | None:
    """The store `url` names, or None for a SQLite file that does not exist yet: reading
    must not create it."""
    path = sqlite_path_from_url(url)
    if path is not None and path != ":memory:" and not Path(path).expanduser().exists():
        return None
    return open_store(url)


async def run(args: argparse.Namespace, settings: Settings) -> int:
    action = args.action or "list"
    store = _existing_store(settings.db)
    try:
        if action == "list":
            return await _list(store, args)
        if action == "show":
            return await _show(store, args)
        return await _delete(store, args)
    finally:
        if store is not None:
            await store.close()


async def _list(store: SessionStore | None, args: argparse.Namespace) -> int:
    limit = DEFAULT_LIMIT if args.limit is None else args.limit
    if limit < 1:
        raise ConfigError(f"--limit must be at least 1, not {limit}")
    sessions = await store.list_sessions(limit=limit) if store is not None else []
    if args.json:
        _print_json([_session_dict(s) for s in sessions])
    elif args.ids:
        for info in sessions:
            print(info.id)
    else:
        width = max((len(s.id) for s in sessions), default=0)
        for info in sessions:
            print(f"{info.id:<{width}}  {_when(info.updated_at)}  {info.title or '(untitled)'}")
    return 0


async def _show(store: SessionStore | None, args: argparse.Namespace) -> int:
    session_id = args.id
    if session_id is None:
        latest = await store.list_sessions(limit=1) if store is not None else []
        if not latest:
            raise ConfigError("there are no conversations yet")
        session_id = latest[0].id
    info = await store.get_session(session_id) if store is not None else None
    if store is None or info is None:
        raise ConfigError(f"no session {session_id!r}")
    turns = await store.history(session_id)
    document = await store.get_document(session_id)
    if args.json:
        out = _session_dict(info)
        out["document"] = {"name": document.name, "chars": len(document.text)} if document else None
        out["turns"] = [_turn_dict(t) for t in turns]
        _print_json(out)
        return 0
    print(f"session {info.id} — {info.title or '(untitled)'}")
    facts = [f"updated {_when(info.updated_at)}", f"{len(turns)} turn{'s' if len(turns) != 1 else ''}"]
    if document is not None:
        facts.append(f"document: {document.name} ({len(document.text):,} characters)")
    print(" · ".join(facts))
    for turn in turns:
        print(f"\n> {turn.user_text}")
        for step in turn.steps:
            if step.get("type") == "tool":
                outcome = step.get("result") if step.get("error") is None else f"error: {step.get('error')}"
                print(f"  → {step.get('name')}({_arguments(step.get('arguments'))}) ← {outcome}")
        if turn.answer:
            print(turn.answer)
        if turn.status != "complete":
            print(f"[{turn.status}{': ' + turn.error if turn.error else ''}]")
        elif turn.finish_reason == "length":
            print("[cut off: the answer reached the token limit]")
    return 0


def _arguments(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


async def _delete(store: SessionStore | None, args: argparse.Namespace) -> int:
    deleted: list[str] = []
    missing: list[str] = []
    for session_id in dict.fromkeys(args.ids):
        ok = store is not None and await store.delete_session(session_id)
        (deleted if ok else missing).append(session_id)
    if args.json:
        _print_json({"deleted": deleted})
    else:
        for session_id in deleted:
            print(f"deleted {session_id}")
    if missing:
        names = ", ".join(repr(m) for m in missing)
        print(f"tokenrelay: error: no session {names}", file=sys.stderr)
        return 1
    return 0


def _session_dict(info: SessionInfo) -> dict[str, Any]:
    return {"id": info.id, "title": info.title, "created_at": info.created_at, "updated_at": info.updated_at}


def _turn_dict(turn: Turn) -> dict[str, Any]:
    return {
        "run_id": turn.run_id,
        "user_text": turn.user_text,
        "answer": turn.answer,
        "status": turn.status,
        "error": turn.error,
        "created_at": turn.created_at,
        "finished_at": turn.finished_at,
        "finish_reason": turn.finish_reason,
        "steps": list(turn.steps),
    }


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp))


def _print_json(value: Any) -> None:
    print(json.dumps(value, ensure_ascii=False, indent=2))
