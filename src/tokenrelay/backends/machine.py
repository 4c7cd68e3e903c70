"""What this process may really use of the machine: CPUs and memory, from affinity and cgroups.

`os.cpu_count()` counts the host's CPUs, which is wrong in a container limited by a cgroup
quota or a CPU set, and llama-cpp-python's default (`cpu_count // 2` decode threads) halves
speed on a small VM. The figures here follow what the kernel will actually schedule:

* CPUs: the affinity mask (`os.sched_getaffinity`), capped by the CPU quota of the cgroup
  and of every cgroup above it (v2 `cpu.max`, v1 `cpu.cfs_quota_us / cpu.cfs_period_us`);
* physical cores: distinct (package, core) pairs among those CPUs, capped by the same quota;
* memory: `MemAvailable`, capped by the cgroup limit minus its usage (v2 `memory.max`,
  v1 `memory.limit_in_bytes`).

Every reader takes its roots as arguments so tests can point them at fake trees; any file
that is missing or unreadable means "no limit from here".
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "Threads",
    "available_cpus",
    "available_memory",
    "choose_threads",
    "cpu_has_amx",
    "cpu_quota",
    "physical_cores",
]

_CGROUP = Path("/sys/fs/cgroup")
_PROC_CGROUP = Path("/proc/self/cgroup")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, ValueError):
        return None


def cpu_has_amx(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU offers Intel AMX tiles (Linux: `amx_tile` among /proc/cpuinfo's flags)."""
    text = _read(cpuinfo) or ""
    flags = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return "amx_tile" in flags.split()


def _cgroup_dirs(root: Path, proc_cgroup: Path, controller: str) -> list[Path]:
    """This process's cgroup directory for `controller` and its ancestors, deepest first."""
    text = _read(proc_cgroup) or ""
    found: list[Path] = []
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, rel = parts
        names = controllers.split(",") if controllers else []
        if controllers == "":  # cgroup v2 (unified): one line "0::/path"
            bases = [root, root / "unified"]
        elif controller in names:
            bases = [root / controllers, *(root / n for n in names)]
        else:
            continue
        for base in bases:
            if not base.is_dir():
                continue
            d = base / rel.lstrip("/")
            while True:
                found.append(d)
                if d == base:
                    break
                d = d.parent
            break
    return found


def cpu_quota(root: Path = _CGROUP, proc_cgroup: Path = _PROC_CGROUP) -> float | None:
    """The CPU quota in CPUs (e.g. 1.5), the smallest along the cgroup path; None if unlimited."""
    limits: list[float] = []
    for d in _cgroup_dirs(root, proc_cgroup, "cpu"):
        v2 = _read(d / "cpu.max")
        if v2:
            quota, _, period = v2.partition(" ")
            if quota != "max" and period:
                try:
                    limits.append(int(quota) / int(period))
                except (ValueError, ZeroDivisionError):
                    pass
        q, p = _read(d / "cpu.cfs_quota_us"), _read(d / "cpu.cfs_period_us")
        if q and p:
            try:
                if int(q) > 0 and int(p) > 0:
                    limits.append(int(q) / int(p))
            except ValueError:
                pass
    return min(limits) if limits else None


def _allowed_cpus() -> set[int]:
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))  # pragma: no cover - not Linux


def available_cpus(root: Path = _CGROUP, proc_cgroup: Path = _PROC_CGROUP) -> int:
    """Logical CPUs this process can keep busy at once (at least 1)."""
    n = len(_allowed_cpus())
    quota = cpu_quota(root, proc_cgroup)
    if quota is not None:
        n = min(n, max(1, math.floor(quota + 0.01)))
    return max(1, n)


def physical_cores(
    cpus: set[int] | None = None, sysfs: Path = Path("/sys/devices/system/cpu"), quota: float | None = None
) -> int:
    """Distinct physical cores among `cpus` (default: the affinity mask), capped by `quota`.

    Hyper-threads share a core's arithmetic units: llama.cpp's decode step is limited by them,
    so one decode thread per physical core is the fastest setting."""
    cpus = _allowed_cpus() if cpus is None else cpus
    cores: set[tuple[str, str]] = set()
    for cpu in cpus:
        topo = sysfs / f"cpu{cpu}" / "topology"
        package, core = _read(topo / "physical_package_id"), _read(topo / "core_id")
        cores.add((package or "?", core) if core is not None else ("cpu", str(cpu)))
    n = len(cores) or 1
    if quota is not None:
        n = min(n, max(1, math.floor(quota + 0.01)))
    return n


def available_memory(
    meminfo: Path = Path("/proc/meminfo"), root: Path = _CGROUP, proc_cgroup: Path = _PROC_CGROUP
) -> int | None:
    """Bytes this process can still allocate without swapping or hitting its cgroup limit."""
    available: int | None = None
    for line in (_read(meminfo) or "").splitlines():
        if line.startswith("MemAvailable:"):
            try:
                available = int(line.split()[1]) * 1024
            except (IndexError, ValueError):
                pass
    for d in _cgroup_dirs(root, proc_cgroup, "memory"):
        for limit_name, usage_name in (
            ("memory.max", "memory.current"),
            ("memory.limit_in_bytes", "memory.usage_in_bytes"),
        ):
            limit, usage = _read(d / limit_name), _read(d / usage_name)
            if not limit or limit == "max":
                continue
            try:
                room = int(limit) - int(usage or 0)
            except ValueError:
                continue
            if room > 0 and int(limit) < 1 << 60:  # v1 reports "no limit" as a huge number
                available = room if available is None else min(available, room)
    return available


@dataclass(frozen=True, slots=True)
class Threads:
    """llama.cpp threads: `decode` for generating one token at a time, `batch` for prompts."""

    decode: int
    batch: int


def choose_threads(configured: int | None = None, configured_batch: int | None = None) -> Threads:
    """Threads for llama.cpp. `configured` (TOKENRELAY_LLAMA_N_THREADS) sets decode threads and,
    unless `configured_batch` (TOKENRELAY_LLAMA_N_THREADS_BATCH) is given, prompt threads too.

    Otherwise prompt evaluation (long matrix products, where threads synchronise rarely) uses
    every available logical CPU, and decoding one thread per available physical core but one.
    A decode step synchronises its threads hundreds of times per token with spinning barriers:
    when one of them loses its core (to the server's event loop, to another process) the others
    wait for it. On the 2-core development machine, shared with other work, 2 decode threads
    were 0.5-1.1x as fast as 1 (median of 7 interleaved comparisons about 0.9x, and once a
    stream fell to 9 tokens/s), faster only in the quietest moments (best of 11: +10%);
    bench/README.md ("Threads") has the figures. Leaving a core to the rest of the process
    costs little where there are many and avoids that collapse where there are few."""
    quota = cpu_quota()
    logical = available_cpus()
    cores = min(logical, physical_cores(quota=quota))
    decode = configured if configured and configured > 0 else max(1, cores - 1)
    if configured_batch and configured_batch > 0:
        batch = configured_batch
    else:
        batch = configured if configured and configured > 0 else logical
    return Threads(decode=decode, batch=batch)
