"""Packaging: what the package index and a fresh install see.

Every third-party module the package imports is a declared dependency (core, or the extra of
the part that imports it); the licence text ships; the metadata has classifiers and project
URLs; the README's pictures load from an absolute URL (the package index shows the README
without the repository's files); the data directory follows the platform (platformdirs),
with XDG_DATA_HOME and the old Linux place still honoured.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import metadata, packages_distributions
from pathlib import Path

import pytest

import tokenrelay.config as config
from tokenrelay.config import default_data_dir

ROOT = Path(__file__).parent.parent
SRC = ROOT / "src" / "tokenrelay"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

#: which extra a part of the package may rely on (the rest needs core dependencies)
EXTRA_OF = {
    "integrations": "langchain",
    "memory/postgres/": "postgres",
    "runs/redis": "redis",
}


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", re.split(r"[\s<>=!~\[;]", requirement, maxsplit=1)[0]).lower()


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_every_imported_module_is_declared() -> None:
    core = {_name(r) for r in PROJECT["dependencies"]}
    extras = {extra: {_name(r) for r in reqs} for extra, reqs in PROJECT["optional-dependencies"].items()}
    distributions = packages_distributions()
    problems = []
    for path in sorted(SRC.rglob("*.py")):
        relative = path.relative_to(SRC).as_posix()
        extra = next((e for part, e in EXTRA_OF.items() if relative.startswith(part)), None)
        allowed = core | (extras[extra] if extra else set())
        for module in sorted(_imports(path)):
            if module in sys.stdlib_module_names or module in ("tokenrelay", "__future__"):
                continue
            dists = {_name(d) for d in distributions.get(module, [module])}
            if not dists & allowed:
                problems.append(f"{relative}: {module} ({', '.join(sorted(dists))})")
    assert problems == [], "imported but not declared:\n" + "\n".join(problems)


def test_the_langchain_extra_has_what_langchain_models_need() -> None:
    langchain = {_name(r) for r in PROJECT["optional-dependencies"]["langchain"]}
    assert {"langchain", "langchain-core", "langgraph"} <= langchain  # init_chat_model is in `langchain`


def test_the_licence_text_ships() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License\n                           Version 2.0, January 2004")
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert "END OF TERMS AND CONDITIONS" in text
    assert PROJECT["license"] == "Apache-2.0"


def test_the_installed_metadata() -> None:
    meta = metadata("tokenrelay")
    classifiers = meta.get_all("Classifier") or []
    for version in ("3.11", "3.12", "3.13"):
        assert f"Programming Language :: Python :: {version}" in classifiers
    assert "Typing :: Typed" in classifiers
    assert not any(c.startswith("License ::") for c in classifiers)  # the SPDX expression says it
    urls = dict(u.split(", ", 1) for u in meta.get_all("Project-URL") or [])
    assert set(urls) >= {"Homepage", "Source", "Issues"}
    assert all(url.startswith("https://github.com/tokenrelay/tokenrelay") for url in urls.values())
    assert meta["Requires-Python"] == ">=3.11"


def test_readme_pictures_load_from_absolute_urls() -> None:
    readme = (ROOT / "README.md").read_text()
    pictures = re.findall(r"!\[[^\]]*\]\(([^)\s]+)", readme) + re.findall(r'<img[^>]+src="([^"]+)"', readme)
    assert pictures
    for url in pictures:
        assert url.startswith("https://raw.githubusercontent.com/tokenrelay/tokenrelay/main/"), url
        assert (ROOT / url.split("/main/", 1)[1]).is_file(), url  # and the file is in the repository


# -- the data directory ---------------------------------------------------------------------------


@pytest.fixture
def home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def test_xdg_data_home_wins(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(home / "xdg"))
    assert default_data_dir() == home / "xdg" / "tokenrelay"


@pytest.mark.skipif(sys.platform != "linux", reason="the Linux default")
def test_linux_keeps_its_place(home: Path) -> None:
    assert default_data_dir() == home / ".local" / "share" / "tokenrelay"


def test_other_platforms_get_their_place_and_keep_old_data(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mac = home / "Library" / "Application Support" / "tokenrelay"
    monkeypatch.setattr(
        config, "user_data_dir", lambda name, appauthor: str(home / "Library" / "Application Support" / name)
    )
    assert default_data_dir() == mac
    legacy = home / ".local" / "share" / "tokenrelay"
    legacy.mkdir(parents=True)  # an earlier tokenrelay kept its database there
    assert default_data_dir() == legacy
    mac.mkdir(parents=True)  # once the platform's place exists, it is the place
    assert default_data_dir() == mac
