"""`tokenrelay completion SHELL`: a shell completion script generated from the argparse parser.

shtab writes a static script once (`tokenrelay completion bash > ...`), so pressing Tab runs
no Python at all and the script can never disagree with the parser it came from. (argcomplete,
the alternative, starts the program on every Tab press and needs a global hook or an
`eval` in the shell's start-up file.) Files complete for `--attach` and `--db`; session ids
for `--session` and `sessions show/delete` come from `tokenrelay sessions list --ids`.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

__all__ = ["script"]

_SESSION_IDS = "tokenrelay sessions list --ids 2>/dev/null"


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    import shtab

    for action in _actions(parser):
        if action.dest in ("attach", "db", "presets_file"):
            action.complete = shtab.FILE  # type: ignore[attr-defined]
        elif action.dest in ("session", "id", "ids"):
            action.complete = shtab.cmd(_SESSION_IDS)  # type: ignore[attr-defined]
    return shtab.complete(parser, shell=shell)


def _actions(parser: argparse.ArgumentParser) -> Iterator[argparse.Action]:
    for action in parser._actions:
        yield action
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                yield from _actions(child)
