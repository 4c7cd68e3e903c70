"""`tokenrelay models`: what is cached here and what is recommended; the first-run notice.

The tiny default model is an English-only demo. The first time it is used from a terminal, the
CLI says so once on stderr (a marker file in the data directory remembers it), with how to switch.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from tokenrelay.config import default_data_dir
from tokenrelay.models import ModelInfo, cached, demo_notice, recommended

__all__ = ["add_parser", "notice_once", "run"]

NOTICE_MARK = "demo-notice-shown"


def add_parser(sub: Any) -> None:
    models = sub.add_parser("models", help="list cached and recommended models")
    models.add_argument("--json", action="store_true", help="one JSON object per model")


def _name(info: ModelInfo) -> str:
    """What to pass to --model: the short alias for hf: models."""
    return f"hf:{info.alias}" if info.model.startswith("hf:") else info.model


def _size(info: ModelInfo) -> str:
    return f"{info.size / 1e9:.1f} GB" if info.size else "-"


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    groups = (("cached", cached()), ("recommended", recommended()))
    if args.json:
        for group, infos in groups:
            for info in infos:
                row = {
                    "group": group,
                    "alias": info.alias,
                    "name": _name(info),
                    "model": info.model,
                    "size": info.size,
                    "languages": list(info.languages),
                    "note": info.note,
                    "path": str(info.path) if info.path else None,
                }
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
        return 0
    for group, infos in groups:
        out.write(f"{group}:\n")
        for info in infos or ():
            languages = ",".join(info.languages)
            out.write(f"  {_name(info):<18} {_size(info):>8}  {languages:<20} {info.note}\n")
        if not infos:
            out.write("  (none)\n")
    out.write("use one with --model MODEL (hf: models download once, then work offline)\n")
    return 0


def notice_once(model: str, err: TextIO | None = None) -> None:
    """Say once, in a terminal, that the tiny default is an English-only demo and how to switch."""
    err = err or sys.stderr
    text = demo_notice(model)
    if text is None or not err.isatty():
        return
    mark = default_data_dir() / NOTICE_MARK
    if mark.exists():
        return
    print(f"tokenrelay: note: {text}", file=err, flush=True)
    try:
        mark.parent.mkdir(parents=True, exist_ok=True)
        mark.touch()
    except OSError:
        pass
