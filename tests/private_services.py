"""Private Redis and PostgreSQL servers for fault tests that stop and restart them: the shared
services (tests/services.py) must never be restarted. Each runs on a free port from a temporary
directory and is stopped at the end. Missing binaries skip the test with the reason, except in
CI (CI=true), where they are a failure like the shared services.

PostgreSQL refuses to run as root: as root, the cluster is created and run as the `postgres`
system user (`runuser`), in a directory that user owns.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from server_fixture import free_port

__all__ = ["PrivatePostgres", "PrivateRedis", "private_postgres", "private_redis"]


def _missing(what: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{what} missing in CI")
    pytest.skip(f"{what} missing")


class PrivateRedis:
    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            _missing("redis-server")
        self.binary = str(binary)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        import redis

        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 10
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        finally:
            client.close()

    def stop(self) -> None:
        """Kill the server (what a crash or a restart looks like to its clients)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@contextlib.contextmanager
def private_redis() -> Iterator[PrivateRedis]:
    with tempfile.TemporaryDirectory(prefix="tokenrelay-redis-") as tmp:
        server = PrivateRedis(Path(tmp))
        server.start()
        try:
            yield server
        finally:
            server.stop()


class PrivatePostgres:
    def __init__(self, workdir: Path) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not found:
            _missing("PostgreSQL server binaries (/usr/lib/postgresql/*/bin)")
        self.bin = Path(found[-1]).parent
        self.port = free_port()
        self.workdir = workdir
        self.data = workdir / "data"
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._as: list[str] = []
        if os.geteuid() == 0:
            runuser = shutil.which("runuser")
            if runuser is None:
                _missing("runuser (to run PostgreSQL as the postgres user)")
            self._as = [str(runuser), "-u", "postgres", "--"]
            shutil.chown(workdir, "postgres")
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-N")

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as, *args], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.workdir / "log"), "-w", "-t", "60",
            "-o", f"-p {self.port} -k {self.workdir} -c listen_addresses=127.0.0.1 -c fsync=off", "start",
        )  # fmt: skip

    def stop(self) -> None:
        """Stop at once (`-m immediate`: connections are cut, as in a crash or a restart)."""
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")


@contextlib.contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    with tempfile.TemporaryDirectory(prefix="tokenrelay-pg-") as tmp:
        os.chmod(tmp, 0o755)
        server = PrivatePostgres(Path(tmp))
        server.start()
        try:
            yield server
        finally:
            server.stop()
