"""The Dockerfile and compose.yaml, checked as far as this machine allows (there is no Docker
engine to build or run them): compose.yaml parses and describes docs/deploy.md's setup, its
nginx runs exactly the example config that tests/e2e/test_nginx_example.py runs under a real nginx,
its addresses and ports agree with that config, every TOKENRELAY_* variable it sets is a
setting, and the Dockerfile copies files that exist and serves what the compose file expects.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import yaml

from tokenrelay.config import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
NGINX_EXAMPLE = ROOT / "examples" / "nginx" / "tokenrelay.conf"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def tokenrelay_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose["services"].items() if s.get("image", "").startswith("tokenrelay")}


def test_compose_has_the_deploy_guides_parts(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"tokenrelay-1", "tokenrelay-2", "nginx", "postgres", "redis"}
    for name, service in tokenrelay_services(compose).items():
        assert service["build"] == ".", name
        env = service["environment"]
        assert env["TOKENRELAY_DB"].startswith("postgresql://"), name
        assert env["TOKENRELAY_REDIS_URL"].startswith("redis://"), name
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
    assert all("healthcheck" in services[name] for name in ("postgres", "redis"))


def test_nginx_runs_the_tested_example_config(compose: dict[str, Any]) -> None:
    from test_nginx_example import EXAMPLE  # the file the nginx test runs

    mounts = [v.split(":") for v in compose["services"]["nginx"]["volumes"]]
    [(source, target, mode)] = mounts
    assert (ROOT / source).resolve() == EXAMPLE.resolve() == NGINX_EXAMPLE.resolve()
    assert target.startswith("/etc/nginx/conf.d/") and mode == "ro"


def test_the_example_upstreams_are_the_compose_hosts(compose: dict[str, Any]) -> None:
    conf = NGINX_EXAMPLE.read_text()
    upstream = re.search(r"upstream tokenrelay \{(.*?)\n\}", conf, re.S)
    assert upstream is not None
    servers = re.findall(r"(?m)^\s*server\s+([\d.]+):(\d+)", upstream.group(1))
    hosts = tokenrelay_services(compose)
    addresses = {s["networks"]["backend"]["ipv4_address"] for s in hosts.values()}
    assert {address for address, _ in servers} == addresses
    subnet = compose["networks"]["backend"]["ipam"]["config"][0]["subnet"]
    assert subnet == "10.0.0.0/24" and all(a.startswith("10.0.0.") for a in addresses)
    for service in hosts.values():
        command = service["command"]
        port = command[command.index("--port") + 1]
        assert {p for _, p in servers} == {port}
        assert command[command.index("--host") + 1] == "0.0.0.0"
    assert "listen 80;" in conf and compose["services"]["nginx"]["ports"] == ["8080:80"]


def test_every_tokenrelay_variable_is_a_setting(compose: dict[str, Any]) -> None:
    known = {"TOKENRELAY_" + f.name.upper() for f in fields(Settings)} - {"TOKENRELAY_EXTRA"}
    dockerfile_env = set(re.findall(r"\b(TOKENRELAY_[A-Z_]+)=", DOCKERFILE.read_text()))
    for service in tokenrelay_services(compose).values():
        names = {k for k in service["environment"] if k.startswith("TOKENRELAY_")}
        assert names <= known, names - known
    assert dockerfile_env and dockerfile_env <= known, dockerfile_env - known


def test_the_database_and_redis_urls_match_their_services(compose: dict[str, Any]) -> None:
    pg = compose["services"]["postgres"]["environment"]
    expected = (
        f"postgresql://{pg['POSTGRES_USER']}:{pg['POSTGRES_PASSWORD']}@postgres:5432/{pg['POSTGRES_DB']}"
    )
    for service in tokenrelay_services(compose).values():
        assert service["environment"]["TOKENRELAY_DB"] == expected
        assert service["environment"]["TOKENRELAY_REDIS_URL"].startswith("redis://redis:6379/")


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_the_dockerfile_builds_what_compose_runs() -> None:
    steps = _instructions()
    kinds = [k for k, _ in steps]
    assert set(kinds) <= {
        "FROM",
        "RUN",
        "WORKDIR",
        "COPY",
        "USER",
        "ENV",
        "EXPOSE",
        "HEALTHCHECK",
        "ENTRYPOINT",
        "CMD",
    }
    froms = [a for k, a in steps if k == "FROM"]
    assert len(froms) == 2 and all(re.match(r"python:3\.1[1-3]-slim", a) for a in froms)
    for k, args in steps:
        if k == "COPY" and not args.startswith("--from"):
            for source in shlex.split(args)[:-1]:
                assert (ROOT / source).exists(), source
    installs = " ".join(a for k, a in steps if k == "RUN" and "pip" in a)
    assert ".[postgres,redis]" in installs and "tokenrelay[postgres,redis]" in installs
    assert ("EXPOSE", "8000") in steps
    assert ("USER", "tokenrelay") in steps  # not root
    [healthcheck] = [a for k, a in steps if k == "HEALTHCHECK"]
    assert "/health" in healthcheck and ":8000" in healthcheck
    assert ("ENTRYPOINT", '["tokenrelay"]') in steps and ("CMD", '["serve"]') in steps
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv*" in ignored and ".git" in ignored and "src" not in ignored


def test_the_deploy_guide_points_at_the_files() -> None:
    guide = (ROOT / "docs" / "deploy.md").read_text()
    assert "compose.yaml" in guide and "Dockerfile" in guide
