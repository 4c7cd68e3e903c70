"""A short, bounded version of bench/soak.py for CI: 2,000 short runs against a server process
(80% normal, 10% abandoned mid-stream by the client, 10% with a backend failure mid-stream),
then the server's open file descriptors, threads, asyncio tasks and RSS are compared.

Method (what a leak is): the server is first warmed up with as many runs as the soak, and its
finished runs (kept for resume) are forgotten; that is the baseline, the high-water mark of
memory for that many retained runs. After the soak its finished runs are forgotten again: any
growth left is memory the runs never gave back. `python bench/soak.py` does the full 10,000
runs and also reports RSS as deployed (finished runs retained).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

RUNS = 2000


def _load_soak() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "bench" / "soak.py"
    spec = importlib.util.spec_from_file_location("tokenrelay_bench_soak", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def soak() -> dict[str, Any]:
    result: dict[str, Any] = _load_soak().measure_leaks(RUNS, warmup=RUNS, forget_warmup=True)
    return result


def test_every_short_run_behaves(soak: dict[str, Any]) -> None:
    counts = soak["counts"]
    assert counts.get("unexpected", 0) == 0, counts
    assert counts["ok"] == RUNS * 8 // 10
    assert counts["abandoned"] == counts["failure reported"] == RUNS // 10


def test_no_growth_in_fds_threads_tasks_or_memory_after_2000_runs(soak: dict[str, Any]) -> None:
    before, after = soak["before"], soak["after_forget"]
    assert after["fds"] - before["fds"] <= 2, (before, after)
    assert after["threads"] - before["threads"] <= 1, (before, after)
    assert after["os_threads"] - before["os_threads"] <= 1, (before, after)
    assert after["tasks"] - before["tasks"] <= 1, (before, after)
    assert after["active_runs"] == 0
    growth = (after["rss"] - before["rss"]) / before["rss"]
    assert growth < 0.10, f"RSS grew {growth:.1%}: {before['rss'] >> 20} -> {after['rss'] >> 20} MB"


def test_finished_runs_kept_for_resume_are_capped(soak: dict[str, Any]) -> None:
    # the proposed cap: the newest 1,000 finished runs, +25% between two sweeps
    assert soak["after"]["runs_retained"] <= 1500, soak["after"]["runs_retained"]
