"""The architecture rules of docs/architecture.md, checked on the source tree (no imports run).

* no import cycles between the modules of src/tokenrelay;
* layers: a module imports only from its own layer or below;
* no module over `MAX_LINES` lines;
* one SSE decoder in the Python code: only tokenrelay/sse.py parses `data:` lines;
* (only where the `duplicates` tool is installed) no block of 6+ lines of logic twice in src/,
  identical or the same shape with other names (imports, signatures, fields, tables excepted).

The import graph is read from the AST: every `import` and `from ... import` anywhere in a
module, at the top, inside functions (a lazy import is still a dependency) and inside
`if TYPE_CHECKING:` blocks. A `from pkg import name` whose `pkg.name` is a module is an edge to
that module; otherwise to `pkg` itself, i.e. its `__init__` (re-exports count as the package).
TYPE_CHECKING imports are not run, so they cannot make an import-time cycle: the cycle check
leaves them out, but the layer check counts them (a type annotation is still knowledge of the
module it names).

`KNOWN_VIOLATIONS` lists what main breaks today, as exact strings; the tests fail on any
violation not listed, and on any listed one that no longer occurs (a stale allowance), so the
list only shrinks. It should end empty. `python tests/test_architecture.py` prints the
violations of the tree as it is, in that format.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
ROOT = "tokenrelay"
MAX_LINES = 400

#: the layers, lowest first: the first name under `tokenrelay.` picks a module's layer
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "events", "messages", "sse", "_redact", "config", "progress"),  # 0 vocabulary
    ("backends", "memory", "tools", "documents", "presets", "models"),  # 1 parts
    ("agent", "run"),  # 2 the agent loop
    ("runs",),  # 3 run registry / driver / channel
    ("api", "callbacks", "testing"),  # 4 the library's faces
    ("server", "cli", "client", "integrations"),  # 5 applications
)
#: the package itself (`tokenrelay/__init__.py`) and `tokenrelay/__main__.py` sit on top
TOP = len(LAYERS)

#: Exceptions to the rules, as exact strings the tests below build (none: keep it that way).
KNOWN_VIOLATIONS: frozenset[str] = frozenset()


#: Pairs of files that repeat a block of 6+ lines of logic today (identical or the same shape), by
#: the `duplicates` tool; declarative runs do not count (see `duplicate_violations`). Checked only
#: where that tool is installed; same rules as above.
KNOWN_DUPLICATES: frozenset[str] = frozenset(
    {
        # a table of (pattern, lambda) rows: the same shape, different rows (data, with lambdas)
        "duplicate agent/arith.py ~ agent/arith.py",
        # LangChain's callback hook signatures (declared by its API, one per hook)
        "duplicate integrations/langchain/handler.py ~ integrations/langchain/handler.py",
    }
)


# == the import graph =================================================================


@dataclass(frozen=True)
class Import:
    source: str  # the importing module, dotted
    target: str  # the imported module (or package), dotted, within tokenrelay
    line: int
    type_only: bool  # inside `if TYPE_CHECKING:`


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every .py under src/tokenrelay (a package is its __init__)."""
    out: dict[str, Path] = {}
    for path in sorted((SRC / ROOT).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST, type_only: bool = False) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement below `node`, with whether a TYPE_CHECKING block guards it."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child, type_only
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.body:
                yield from _walk(ast.Module(body=[stmt], type_ignores=[]), True)
            for stmt in child.orelse:
                yield from _walk(ast.Module(body=[stmt], type_ignores=[]), type_only)
        else:
            yield from _walk(child, type_only)


def imports_of(name: str, path: Path, modules: Iterable[str]) -> list[Import]:
    known = set(modules)
    is_package = path.name == "__init__.py"
    out: list[Import] = []

    def add(target: str, line: int, type_only: bool) -> None:
        if target == ROOT or target.startswith(ROOT + "."):
            while target not in known and "." in target:  # `import tokenrelay.x.Name`-like
                target = target.rsplit(".", 1)[0]
            if target != name:
                out.append(Import(name, target, line, type_only))

    for node, type_only in _walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno, type_only)
            continue
        if node.level:  # relative: from the package of this module, `level - 1` packages up
            package = name.split(".") if is_package else name.split(".")[:-1]
            package = package[: len(package) - (node.level - 1)]
            base = ".".join([*package, *([node.module] if node.module else [])])
        else:
            base = node.module or ""
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            add(sub if sub in known else base, node.lineno, type_only)
    return out


def import_graph() -> list[Import]:
    files = module_files()
    return [imp for name, path in files.items() for imp in imports_of(name, path, files)]


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] == "__main__":
        return TOP
    for level, names in enumerate(LAYERS):
        if parts[1] in names:
            return level
    return None


def strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's components of more than one node (a cycle), each sorted, iteratively."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return sorted(out)


# == the allowance ======================================================================


def short(name: str) -> str:
    """A module or file name without the `tokenrelay.` / `tokenrelay/` in front, for messages."""
    return name.removeprefix(ROOT + ".").removeprefix(ROOT + "/")


def check(kind: str, found: set[str]) -> None:
    """No violation of `kind` outside the allowance, and no stale allowance of that kind."""
    known = {v for v in KNOWN_VIOLATIONS | KNOWN_DUPLICATES if v.startswith(kind + " ")}
    new = sorted(found - known)
    stale = sorted(known - found)
    problems = []
    if new:
        problems.append(f"new {kind} violations (fix them; see docs/architecture.md):\n" + "\n".join(new))
    if stale:
        problems.append(f"fixed {kind} violations: remove them from the allowance:\n" + "\n".join(stale))
    assert not problems, "\n".join(problems)


def cycle_violations() -> set[str]:
    edges: dict[str, set[str]] = {}
    for imp in import_graph():
        if not imp.type_only:
            edges.setdefault(imp.source, set()).add(imp.target)
    return {"cycle " + " ".join(map(short, component)) for component in strongly_connected(edges)}


def package_cycle_violations() -> set[str]:
    """Cycles between the top-level units (tokenrelay.X), the root package left out."""
    edges: dict[str, set[str]] = {}
    for imp in import_graph():
        a, b = (".".join(m.split(".")[:2]) for m in (imp.source, imp.target))
        if not imp.type_only and a != b and ROOT not in (a, b):
            edges.setdefault(a, set()).add(b)
    return {"package-cycle " + " ".join(map(short, c)) for c in strongly_connected(edges)}


def layer_violations() -> set[str]:
    found: set[str] = set()
    for name in module_files():
        if layer_of(name) is None:
            found.add(f"unlayered {short(name)}")
    for imp in import_graph():
        source, target = layer_of(imp.source), layer_of(imp.target)
        if source is not None and target is not None and target > source:
            found.add(f"layer {short(imp.source)} -> {short(imp.target)}")
    return found


def size_violations() -> set[str]:
    found = set()
    for path in module_files().values():
        if len(path.read_text(encoding="utf-8").splitlines()) > MAX_LINES:
            found.add(f"size {short(path.relative_to(SRC).as_posix())}")
    return found


_FIELD_METHODS = {"startswith", "removeprefix", "partition", "split", "find", "index", "rfind", "lstrip"}


def _strings(nodes: Iterable[ast.expr]) -> list[str]:
    return [n.value for n in nodes if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def _parses_sse(tree: ast.AST) -> bool:
    """A call like `line.startswith("data:")` / `line.partition(": ")`-then-`== "data"`: what
    reading the SSE wire format looks like (writing it is f-strings, not these)."""
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in _FIELD_METHODS
        ):
            args = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            if any(a.startswith("data:") for a in args):
                return True
        if isinstance(node, ast.Compare) and any(isinstance(op, ast.Eq | ast.NotEq) for op in node.ops):
            operands = [node.left, *node.comparators]
            constants = [
                o.value for o in operands if isinstance(o, ast.Constant) and isinstance(o.value, str)
            ]
            if any(c in ("data", "data:") for c in constants) and any(
                isinstance(o, ast.Name) for o in operands
            ):
                return True
    return False


def sse_decoder_violations() -> set[str]:
    found = set()
    for name, path in module_files().items():
        if name != f"{ROOT}.sse" and _parses_sse(ast.parse(path.read_text(encoding="utf-8"))):
            found.add(f"sse-decoder {short(path.relative_to(SRC).as_posix())}")
    return found


# == the tests ==========================================================================


def test_every_module_parses_and_the_graph_sees_known_edges() -> None:
    """The graph reader itself: it sees top-level, lazy and relative imports."""
    graph = import_graph()
    assert len(module_files()) > 50
    assert any(i.source == f"{ROOT}.testing" and i.target == f"{ROOT}.events" for i in graph)
    tree = ast.parse("import a\ndef f():\n    import b\nif TYPE_CHECKING:\n    import c\n")
    assert [(n.names[0].name, t) for n, t in _walk(tree)] == [("a", False), ("b", False), ("c", True)]


def test_the_cycle_finder_finds_cycles() -> None:
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_between_modules() -> None:
    check("cycle", cycle_violations())


def test_no_import_cycles_between_packages() -> None:
    check("package-cycle", package_cycle_violations())


def test_imports_only_go_down_the_layers() -> None:
    check("layer", {v for v in layer_violations() if v.startswith("layer ")})
    check("unlayered", {v for v in layer_violations() if v.startswith("unlayered ")})


def test_no_module_is_over_the_size_limit() -> None:
    check("size", size_violations())


def test_one_sse_decoder() -> None:
    assert _parses_sse(ast.parse('line.startswith("data:")'))
    assert _parses_sse(ast.parse('name, _, v = line.partition(":")\nif name == "data": pass'))
    assert not _parses_sse(ast.parse('f"data: {x}\\n\\n"'))
    assert not _parses_sse(ast.parse('message["data"]'))
    check("sse-decoder", sse_decoder_violations())


def duplicates_output() -> str:
    """The `duplicates` tool's report on src/ (paths relative to src/)."""
    command = ["duplicates", "--repo", str(SRC), "--most", "200", "--seconds", "60"]
    return subprocess.run(command, capture_output=True, text=True, check=True, cwd=SRC).stdout


_DATA_NODES: tuple[type[ast.AST], ...] = (
    ast.Constant,
    ast.Name,
    ast.Attribute,
    ast.Call,
    ast.keyword,
    ast.Load,
    ast.Tuple,
)
_DATA_NODES += (ast.List, ast.Dict, ast.Set, ast.UnaryOp, ast.BinOp, ast.operator, ast.unaryop)


#: calls that build a value rather than act: these, and constructors (a capitalised name)
_BUILDERS = frozenset({"field", "frozenset", "tuple", "list", "dict", "set", "TypeVar"})


def _is_builder(call: ast.Call) -> bool:
    func = call.func
    name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
    return name[:1].isupper() or name in _BUILDERS


def _is_data(node: ast.AST) -> bool:
    """A literal made only of constants, names and constructor calls of them (a table row, a
    default). A call of a function (`parse(body)`, `store.get(key)`) is an action, not data."""
    return all(
        isinstance(n, _DATA_NODES) and (not isinstance(n, ast.Call) or _is_builder(n)) for n in ast.walk(node)
    )


def declarative_lines(path: Path) -> set[int]:
    """Lines that declare rather than do: imports, `def` signatures (decorators to the colon),
    annotated fields, constants and data literals, docstrings. Two modules that import the same
    names, implement the same abstract method or declare parallel tables repeat such lines of
    necessity; repeated logic is what the duplicate rule is after."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    lines: set[int] = set()

    def span(node: ast.AST, end: int | None = None) -> None:
        first = getattr(node, "lineno", 0)
        last = end if end is not None else getattr(node, "end_lineno", first) or first
        lines.update(range(first, last + 1))

    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            span(node)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            for decorator in node.decorator_list:
                span(decorator)
            span(node, node.body[0].lineno - 1 if node.body[0].lineno > node.lineno else node.lineno)
        elif isinstance(node, ast.AnnAssign | ast.Assign) and (node.value is None or _is_data(node.value)):
            span(node)
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            span(node)  # docstrings
        elif isinstance(node, ast.Call) and _is_data(node):
            span(node)  # a constructor of data: a table row
        elif isinstance(node, ast.Call):
            args: list[ast.expr | ast.keyword] = [*node.args, *node.keywords]
            for arg in args:
                if arg.lineno > node.lineno and _is_data(arg):
                    span(arg)  # an argument on a line of its own: values passed on, like a signature
    return lines


def _code_lines(path: Path, first: int, last: int) -> set[int]:
    text = path.read_text(encoding="utf-8").splitlines()
    return {
        n
        for n in range(first, last + 1)
        if n <= len(text)
        and text[n - 1].strip()
        and not text[n - 1].strip().startswith("#")
        and text[n - 1].strip() not in {")", "]", "}", "),", "],", "},", "(", "[", "{"}
    }


def duplicate_violations(output: str) -> set[str]:
    """`duplicate a.py ~ b.py` per pair of files whose longest shared run (identical, or the same
    shape with other names) is logic: a run made only of declarative lines on both sides (see
    `declarative_lines`) and runs the tool marks boilerplate are not counted."""
    found = set()
    for line in output.splitlines():
        match = re.match(r"D\d+ (\S+):(\d+)-(\d+) ~ (\S+):(\d+)-(\d+)(.*)$", line)
        if not match or "boilerplate" in match[7]:
            continue
        sides = [(SRC / match[1], int(match[2]), int(match[3]))]
        sides.append((SRC / match[4], int(match[5]), int(match[6])))
        if all(_code_lines(p, a, b) <= declarative_lines(p) for p, a, b in sides):
            continue
        found.add(f"duplicate {short(match[1])} ~ {short(match[4])}")
    return found


def test_declarative_lines_leave_out_logic(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text(
        "X = Info(name='a', size=2 * 3)\n"  # 1: a table row
        "def f(body, store):\n"  # 2: a signature
        "    parsed = parse(body)\n"  # 3: logic from here on
        "    store.save(parsed)\n"
        "    return parsed\n"
        "store.save(\n"  # 6: the call is logic, its arguments on lines of their own are not
        "    parsed,\n"
        "    key=body.key,\n"
        ")\n",
        encoding="utf-8",
    )
    assert declarative_lines(module) == {1, 2, 7, 8}


@pytest.mark.skipif(shutil.which("duplicates") is None, reason="the `duplicates` tool is not installed")
def test_no_duplicate_blocks() -> None:
    """Optional: only where the `duplicates` tool is installed (not in CI)."""
    out = duplicates_output()
    assert "incomplete:" not in out and "more pairs)" not in out, out
    check("duplicate", duplicate_violations(out))


def current_violations() -> list[str]:
    """Every violation in the tree now, in the allowance's format (duplicates where the tool is)."""
    found = cycle_violations() | package_cycle_violations() | layer_violations()
    found |= size_violations() | sse_decoder_violations()
    if shutil.which("duplicates"):
        found |= duplicate_violations(duplicates_output())
    return sorted(found)


if __name__ == "__main__":  # `python tests/test_architecture.py`: what to put in the allowance
    for violation in current_violations():
        print(f'        "{violation}",')


def test_tests_mirror_the_source_tree() -> None:
    """tests/<package>/ for each package of src/tokenrelay (plus e2e/ for real-server and browser
    suites); a test file at the top of tests/ is about a top-level module or the whole package."""
    tests = Path(__file__).resolve().parent
    packages = {p.parent.name for p in (SRC / ROOT).glob("*/__init__.py")}
    folders = {p.parent.name for p in tests.glob("*/test_*.py")}
    assert folders <= packages | {"e2e"}, folders - packages
    modules = {p.stem.lstrip("_") for p in (SRC / ROOT).glob("*.py")}
    whole = {"architecture", "packaging", "public_api"}
    strays = [p.name for p in tests.glob("test_*.py") if p.stem.removeprefix("test_") not in modules | whole]
    assert not strays, f"test files to put under the folder of what they test: {strays}"
