"""The shape of the code (docs/architecture.md): layers import downwards only, no import
cycles, small modules. Read from the source with `ast`, imports inside functions included (a
lazy import is still an arrow between two modules)."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "tokenrelay"
MAX_LINES = 400

#: top-level name under `tokenrelay` -> layer (docs/architecture.md); the package itself is above all
LAYERS: dict[str, int] = {
    **dict.fromkeys(["errors", "events", "messages", "sse", "sinks", "_redact", "config"], 0),
    **dict.fromkeys(["backends", "memory", "tools", "documents", "presets", "models"], 1),
    "agent": 2,
    "run": 2,  # a plain model run: the smallest agent
    "runs": 3,
    **dict.fromkeys(["api", "callbacks", "testing"], 4),
    **dict.fromkeys(["server", "cli", "client", "integrations"], 5),
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def resolve(name: str) -> str | None:
    """The tokenrelay module `name` refers to (a package's __init__ when it is not a module)."""
    known = modules()
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


@cache
def imports(module: str) -> frozenset[str]:
    path = modules()[module]
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import submodule` depends on the submodule; `from pkg import name` on pkg
            targets = [f"{base}.{alias.name}" for alias in node.names]
        for target in targets:
            if target == "tokenrelay" or target.startswith("tokenrelay."):
                resolved = resolve(target)
                if resolved is not None and resolved != module:
                    found.add(resolved)
    return frozenset(found)


def layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:
        return max(LAYERS.values()) + 1  # the package's public surface re-exports everything
    return LAYERS[parts[1]]


def test_every_module_has_a_layer() -> None:
    unknown = sorted({m.split(".")[1] for m in modules() if "." in m and m.split(".")[1] not in LAYERS})
    assert not unknown, f"add these to LAYERS and docs/architecture.md: {unknown}"


def test_layers_import_downwards_only() -> None:
    upward = [
        f"{module} (layer {layer(module)}) imports {target} (layer {layer(target)})"
        for module in modules()
        for target in sorted(imports(module))
        if layer(target) > layer(module)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_cycles() -> None:
    graph = {module: imports(module) for module in modules()}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles[:20])


@pytest.mark.parametrize("module", sorted(modules()))
def test_modules_are_small(module: str) -> None:
    lines = len(modules()[module].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{module} has {lines} lines: it holds more than one concept"
