"""CPUs and memory from affinity and cgroups (fake cgroup trees), and the threads chosen."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tokenrelay.backends import machine
from tokenrelay.backends.machine import Threads, available_cpus, available_memory, choose_threads, cpu_quota


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_quota_is_the_smallest_along_the_path(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    _write(root / "cpu.max", "max 100000\n")
    _write(root / "app" / "cpu.max", "300000 100000\n")  # 3 CPUs for the parent
    _write(root / "app" / "worker" / "cpu.max", "150000 100000\n")  # 1.5 for us
    proc = tmp_path / "self_cgroup"
    _write(proc, "0::/app/worker\n")
    assert cpu_quota(root, proc) == 1.5
    assert available_cpus(root, proc) == min(1, len(os.sched_getaffinity(0)))


def test_cgroup_v1_cfs_quota(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    _write(root / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_quota_us", "200000\n")
    _write(root / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_period_us", "100000\n")
    proc = tmp_path / "self_cgroup"
    _write(proc, "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n")
    assert cpu_quota(root, proc) == 2.0


@pytest.mark.parametrize("text", ["max 100000\n", "-1\n", ""])
def test_no_quota(tmp_path: Path, text: str) -> None:
    root = tmp_path / "cgroup"
    _write(root / "cpu.max", text)
    _write(root / "cpu.cfs_quota_us", "-1\n")
    _write(root / "cpu.cfs_period_us", "100000\n")
    proc = tmp_path / "self_cgroup"
    _write(proc, "0::/\n")
    assert cpu_quota(root, proc) is None
    assert available_cpus(root, proc) == len(os.sched_getaffinity(0))


def test_missing_files_mean_no_limit(tmp_path: Path) -> None:
    assert cpu_quota(tmp_path / "nothing", tmp_path / "none") is None
    assert available_memory(tmp_path / "meminfo", tmp_path / "nothing", tmp_path / "none") is None


def test_memory_is_capped_by_the_cgroup(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    _write(meminfo, "MemTotal: 16000000 kB\nMemAvailable: 8000000 kB\n")
    root = tmp_path / "cgroup"
    _write(root / "memory" / "job" / "memory.limit_in_bytes", str(3 * 1024**3))
    _write(root / "memory" / "job" / "memory.usage_in_bytes", str(1024**3))
    proc = tmp_path / "self_cgroup"
    _write(proc, "4:memory:/job\n")
    assert available_memory(meminfo, root, proc) == 2 * 1024**3
    _write(proc, "0::/\n")  # another cgroup: only MemAvailable counts
    assert available_memory(meminfo, root, proc) == 8_000_000 * 1024


def test_physical_cores_count_hyperthreads_once(tmp_path: Path) -> None:
    sysfs = tmp_path / "cpu"
    for cpu, core in {0: 0, 1: 0, 2: 1, 3: 1}.items():  # two cores, two threads each
        _write(sysfs / f"cpu{cpu}" / "topology" / "core_id", str(core))
        _write(sysfs / f"cpu{cpu}" / "topology" / "physical_package_id", "0")
    assert machine.physical_cores({0, 1, 2, 3}, sysfs) == 2
    assert machine.physical_cores({0, 1}, sysfs) == 1
    assert machine.physical_cores({0, 1, 2, 3}, sysfs, quota=1.0) == 1


def test_configured_threads_win() -> None:
    assert choose_threads(3) == Threads(decode=3, batch=3)
    assert choose_threads(3, 5) == Threads(decode=3, batch=5)
    assert choose_threads(None, 5).batch == 5


def test_default_threads_leave_a_core_for_the_server() -> None:
    threads = choose_threads(None)
    assert threads.batch == available_cpus()  # prompts: every available CPU
    assert threads.decode == max(1, min(available_cpus(), machine.physical_cores(quota=cpu_quota())) - 1)


def test_amx_is_read_from_the_cpu_flags(tmp_path: Path) -> None:
    """AMX machines load llama.cpp models without its AMX weight buffers (llamacpp_worker.py)."""
    cpuinfo = tmp_path / "cpuinfo"
    _write(cpuinfo, "processor\t: 0\nflags\t\t: fpu avx2 amx_bf16 amx_tile amx_int8\n\nprocessor\t: 1\n")
    assert machine.cpu_has_amx(cpuinfo)
    _write(cpuinfo, "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_vnni\n")
    assert not machine.cpu_has_amx(cpuinfo)
    assert not machine.cpu_has_amx(tmp_path / "missing")
