"""Bounded load and soak harness: faults survived, payloads rejected, concurrent streams held,
leak deltas. Prints one figures table (the one in docs/reliability.md).

Phases (all by default; pick with ``--phases``):

* ``faults``       runs the fault-injection and hostile-input suites (tests/server/test_faults.py,
                   tests/server/test_hostile_input.py, tests/server/test_fuzz_openapi.py) in a pytest
                   subprocess
                   and counts, per group of faults, the cases injected, survived (passed), and the
                   known bugs (strict xfails: not survived yet, each with its fix in the report);
* ``payloads``     the calculator attack corpus (tests/tools/test_calculator.py: CVE-2023-29374,
                   CVE-2023-39631 and resource-exhaustion payloads) as the model's tool input
                   through the agent, JSON and native tool protocols: tried, rejected as an error
                   observation with the run ending cleanly, slowest run;
* ``concurrency``  waves of N simultaneous runs (raw /chat, SSE /chat/events, OpenAI stream,
                   round robin) with distinct prompts against one server process: errors,
                   cross-talk (an answer that is not its own prompt's), peak runs in flight
                   (server-side), server RSS per stream;
* ``soak``         ``--runs`` short runs (default 10,000) from 8 concurrent clients: 80% normal
                   (answer checked exactly), 10% long answers the client abandons mid-stream,
                   10% with a backend failure mid-stream (the error must be reported properly);
                   open fds, threads, asyncio tasks and RSS of the server before and after.

The server is a separate process (``python -c``: create_app with a fast in-script backend, one
uvicorn worker, SQLite in a temporary directory) with one extra route, ``/_soak/stats``, that
reports its own fds, threads, tasks and RSS. The load generator is asyncio with raw sockets
(``Connection: close``; it parses chunked bodies itself), so the client is never the limit.

Usage (repository root, venv active):
  python bench/soak.py                       # everything, about 3-5 min on 2 cores
  python bench/soak.py --quick               # smaller numbers, about 1 min
  python bench/soak.py --phases soak --runs 10000
  python bench/soak.py --phases concurrency --levels 200,500,1000,2000

Like the other scripts in bench/, it prints figures and always exits 0; the PASS/FAIL column
says whether a figure meets the hardening issue's requirement.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from soak_round2 import rows as round2_rows  # noqa: E402
from soak_round2 import run_limits, run_slow_clients, run_uploads  # noqa: E402

PREFIX = '{"action": "Final Answer", "action_input": "'

SERVER_SCRIPT = r"""
import asyncio, gc, json, os, sys, threading
from collections.abc import Sequence
import uvicorn
from tokenrelay.backends.base import Backend, FinishChunk, GenerationSettings, TextChunk
from tokenrelay.config import Settings
from tokenrelay.errors import BackendError
from tokenrelay.events import Usage
from tokenrelay.server.app import create_app

db, port, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
PREFIX = '{"action": "Final Answer", "action_input": "'


class SoakBackend(Backend):
    # "long ..." prompts: a 400-word answer; "fail ..." prompts: a BackendError after 3 chunks;
    # anything else: "You said: <prompt>" in 8-character chunks, `rate` chunks/s (0: no pacing)
    name = "soak"

    async def stream(self, messages, *, tools=None, settings=GenerationSettings()):
        text = [m.content for m in messages if m.role == "user"][-1]
        if text.startswith("long"):
            pieces = [PREFIX, *["word "] * 400, '"}']
        else:
            body = json.dumps("You said: " + text, ensure_ascii=False)[1:-1]
            pieces = [PREFIX, *[body[i : i + 8] for i in range(0, len(body), 8)], '"}']
        interval = 1.0 / rate if rate else 0.0
        for i, piece in enumerate(pieces):
            if text.startswith("fail") and i == 3:
                raise BackendError("injected backend failure")
            if interval:
                await asyncio.sleep(interval)
            elif text.startswith("long") and i % 16 == 0:
                await asyncio.sleep(0.001)
            yield TextChunk(piece)
        yield FinishChunk("stop", Usage(prompt_tokens=len(text), completion_tokens=len(pieces)))


app = create_app(Settings(db="sqlite:///" + db), backend=SoakBackend())


@app.get("/_soak/stats", include_in_schema=False)
async def stats(forget: bool = False):
    registry = app.state.registry
    if forget:  # forget finished runs now instead of after `retention_s`, then collect garbage
        retention, registry.retention_s, registry._last_sweep = registry.retention_s, 0.0, 0.0
        registry._sweep()
        registry.retention_s = retention
        gc.collect()
    with open("/proc/self/status") as f:
        status = dict(line.split(":", 1) for line in f)
    return {
        "tasks": len(asyncio.all_tasks()),
        "threads": threading.active_count(),
        "thread_names": sorted(t.name for t in threading.enumerate()),
        "os_threads": int(status["Threads"]),
        "fds": len(os.listdir("/proc/self/fd")),
        "rss": int(status["VmRSS"].split()[0]) * 1024,
        "runs_retained": len(app.state.registry),
        "active_runs": len(app.state.registry.active(owner=None)),
    }


uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", backlog=4096)
"""


# --------------------------------------------------------------------------- the server process


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    def __init__(self, db: Path, *, rate: float = 0.0) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVER_SCRIPT, str(db), str(self.port), str(rate)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("the server did not start: " + (self.proc.stderr.read() or b"").decode())
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the server did not start within 60 s") from None
                time.sleep(0.1)

    def stats(self, *, forget: bool = False) -> dict[str, int]:
        """The server's fds, threads, tasks, RSS...; `forget`: first drop its finished runs."""
        path = "/_soak/stats?forget=true" if forget else "/_soak/stats"
        result = asyncio.run(request(self.port, "GET", path))
        stats: dict[str, int] = json.loads(result.body)
        return stats

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stderr:
            self.proc.stderr.close()


# --------------------------------------------------------------------------- a raw HTTP client


@dataclass
class Result:
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    #: the body ended properly (the chunked terminator, or the whole Content-Length)
    complete: bool = False
    error: str | None = None


async def request(
    port: int,
    method: str,
    path: str,
    body: Any = None,
    *,
    abandon_after_body: bool = False,
    limit_s: float = 60.0,
) -> Result:
    """One HTTP/1.1 request on its own connection (`Connection: close`), parsed by hand."""
    result = Result()
    data = json.dumps(body).encode() if body is not None else b""
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(limit_s):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(head.encode() + b"\r\n" + data)
            status_line = await reader.readline()
            result.status = int(status_line.split()[1])
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.decode("latin-1").partition(":")
                result.headers[name.strip().lower()] = value.strip()
            parts: list[bytes] = []
            if result.headers.get("transfer-encoding") == "chunked":
                while True:
                    size_line = await reader.readline()
                    if not size_line:
                        break  # cut without the terminator
                    size = int(size_line.split(b";")[0], 16)
                    if size == 0:
                        await reader.readline()
                        result.complete = True
                        break
                    parts.append(await reader.readexactly(size))
                    await reader.readexactly(2)
                    if abandon_after_body:
                        break
            else:
                length = int(result.headers.get("content-length", "0"))
                parts.append(await reader.readexactly(length))
                result.complete = True
            result.body = b"".join(parts)
    except (OSError, asyncio.IncompleteReadError, ValueError, IndexError, TimeoutError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        if writer is not None:
            if abandon_after_body and writer.transport is not None:
                writer.transport.abort()
            else:
                writer.close()
    return result


ENDPOINTS = ("/chat", "/chat/events", "/v1/chat/completions")


def body_for(path: str, prompt: str, session_id: str | None = None) -> dict[str, Any]:
    if path == "/v1/chat/completions":
        return {"messages": [{"role": "user", "content": prompt}], "stream": True}
    return {"text": prompt, "session_id": session_id}


def outcome(path: str, result: Result) -> tuple[str, str]:
    """("finished" | "error" | "broken", the answer text received)."""
    if result.status != 200:
        return "broken", f"HTTP {result.status}: {result.body[:200]!r} {result.error}"
    text = result.body.decode("utf-8", "replace")
    if path == "/chat":
        return ("finished" if result.complete else "error"), text
    answer, terminal = "", None
    for block in text.split("\n\n"):
        for line in block.split("\n"):
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                terminal = terminal or "finished"
                continue
            data = json.loads(line[6:])
            if path == "/chat/events":
                if data.get("type") == "answer_delta":
                    answer += data["text"]
                elif data.get("type") in ("run_finished", "error"):
                    terminal = "finished" if data["type"] == "run_finished" else "error"
            elif "error" in data:
                terminal = "error"
            elif data.get("choices"):
                answer += data["choices"][0]["delta"].get("content") or ""
    if not result.complete:
        return "broken", answer
    return terminal or "broken", answer


# --------------------------------------------------------------------------- phases


SUITES = (
    "tests/server/test_faults.py", "tests/server/test_hostile_input.py", "tests/server/test_fuzz_openapi.py",
    # round two (issue 12)
    "tests/server/test_slow_clients.py", "tests/runs/test_remote_resume.py",
    "tests/server/test_quotas.py", "tests/memory/test_store_faults.py",
    "tests/runs/test_coordination_writer.py", "tests/server/test_exposure.py",
    "tests/memory/test_memory_window.py",
)  # fmt: skip


def run_fault_suites(model: bool = False) -> dict[str, Any]:
    """Run the fault/hostile/fuzz suites and count their cases per group; the tests on the real
    embedded model (`-m model`, a few seconds each) only with `model`."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "junit.xml"
        started = time.monotonic()
        select = [] if model else ["-m", "not model"]
        proc = subprocess.run(
            [
                sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *select,
                f"--junitxml={report}", *SUITES,
            ],
            cwd=ROOT, capture_output=True, text=True,
        )  # fmt: skip
        elapsed = time.monotonic() - started
        if not report.exists():
            return {"error": proc.stdout[-2000:] + proc.stderr[-2000:]}
        tree = ET.parse(report)
    groups: dict[str, Counter[str]] = {}
    failures: list[str] = []
    for case in tree.iter("testcase"):
        name = case.get("name", "")
        module = case.get("classname", "").rsplit(".", 1)[-1]
        group = _group(module, name.split("[")[0])
        verdict = "passed"
        for child in case:
            if child.tag == "skipped":
                verdict = "xfailed" if child.get("type") == "pytest.xfail" else "skipped"
            elif child.tag in ("failure", "error"):
                verdict = "failed"
        if verdict == "failed":
            failures.append(f"{case.get('classname')}::{name}")
        groups.setdefault(group, Counter())[verdict] += 1
    if proc.returncode not in (0, 1):  # 1: some test failed (listed); anything else: pytest itself
        failures.append("pytest exited with " + str(proc.returncode) + ": " + proc.stdout[-1500:])
    return {"groups": groups, "seconds": elapsed, "exit": proc.returncode, "failures": failures}


#: (group, label, words in a test's name that put it in the group), in the table's order
_GROUPS: list[tuple[str, str, tuple[str, ...]]] = [
    ("disconnect", "client disconnect mid-stream (llama.cpp stops, upstream request closed, TCP reset)",
     ("disconnect", "connection_reset")),
    ("upstream", "backend fails mid-stream (reset, 500, error event, malformed chunk, no [DONE], stalls)",
     ("upstream_failure",)),
    ("tool", "tool hangs, raises, floods, calls sys.exit", ("tool",)),
    ("reader", "slow reader (1 byte/s); backend that ignores max_tokens", ("reader", "never_ends")),
    ("restart", "server SIGKILLed mid-run and restarted (history, PRAGMA integrity_check)", ("sigkill",)),
    ("sessions", "200 simultaneous sessions, all endpoints; --workers 2 latency",
     ("200_simultaneous", "workers")),
    ("bodies", "hostile bodies: nesting, bad UTF-8, lone surrogates, NUL, control chars, huge numbers, 10 MB",
     ("hostile_bodies", "unparseable", "lone_surrogates", "content_parts", "validation_error", "ten_megabyte",
      "control_characters", "paths_query")),
    ("keys", "session isolation with API keys (404, not 403)", ("key",)),
    ("calculator", "calculator attack corpus through the agent (2 protocols)", ("calculator",)),
    ("framing", "SSE framing / [DONE] in model output, tools, errors, upstream (+ property test)",
     ("framing", "no_model_output")),
    ("fuzz", "schemathesis fuzzing of the OpenAPI description (keys off and on)", ()),
    ("slowclients", "slow clients: silent, slow-header, half-sent, unauthenticated and parallel bodies, "
     "idle piles, oversized heads (h11 + httptools)", ()),
    ("resume", "resume on a worker that does not own the run: ids at/past the end, 10**200, leaving "
     "clients, 60 abandoned readers vs the heartbeat", ()),
    ("quotas", "per-key limits (runs, sessions, requests/min; shared through Redis) and session paging", ()),
    ("services", "PostgreSQL restarted, Redis restarted, SQLite disk full mid-run; writer outage bounds", ()),
    ("exposure", "Host allow-list without keys, /docs off, page framing, /health without a key, "
     "malformed notebooks", ()),
    ("memory", "memory window: failed, empty, running and concurrent turns; partial answers marked", ()),
]  # fmt: skip

#: round-two suites, grouped by module
_MODULE_GROUPS = {
    "test_slow_clients": "slowclients", "test_remote_resume": "resume", "test_quotas": "quotas",
    "test_store_faults": "services", "test_coordination_writer": "services", "test_exposure": "exposure",
    "test_memory_window": "memory",
}  # fmt: skip


def _group(module: str, name: str) -> str:
    if module == "test_fuzz_openapi":
        return "fuzz"
    if module in _MODULE_GROUPS:
        return _MODULE_GROUPS[module]
    if name == "test_sessions_from_before_keys_were_enabled_belong_to_no_key":
        return "keys"
    for key, _, words in _GROUPS:
        if any(word in name for word in words):
            return key
    return "other"


def run_payloads() -> dict[str, Any]:
    """The calculator corpus as the model's tool input, both protocols, through the agent."""
    sys.path.insert(0, str(ROOT / "tests"))
    from calculator_corpus import PAYLOADS
    from tokenrelay.agent.loop import Agent
    from tokenrelay.backends.base import FinishChunk, ToolCallChunk
    from tokenrelay.events import RunFinished, ToolCallFinished
    from tokenrelay.messages import Message
    from tokenrelay.testing import ScriptedBackend

    async def main() -> dict[str, Any]:
        tried = rejected = 0
        slowest = 0.0
        for native in (False, True):
            current: list[str] = [""]

            def reply(
                messages: Sequence[Message], native: bool = native, current: list[str] = current
            ) -> Any:
                last = messages[-1]
                if last.role == "tool" or last.content.startswith("TOOL RESPONSE"):
                    final = "Observed: " + last.content[:100]
                    return (
                        [final] if native else json.dumps({"action": "Final Answer", "action_input": final})
                    )
                if native:
                    arguments = json.dumps({"expression": current[0]})
                    return [ToolCallChunk(0, "call_1", "Calculator", arguments), FinishChunk("tool_calls")]
                return json.dumps({"action": "Calculator", "action_input": current[0]})

            backend = ScriptedBackend(reply, native_tools=native, token_size=4096)
            agent = Agent(backend, tool_protocol="native" if native else "json", tool_timeout_s=5.0)
            for payload in PAYLOADS:
                current[0] = payload
                started = time.monotonic()
                events = [e async for e in agent.run("compute it")]
                slowest = max(slowest, time.monotonic() - started)
                tried += 1
                finished = [e for e in events if isinstance(e, ToolCallFinished)]
                if (
                    isinstance(events[-1], RunFinished)
                    and len(finished) == 1
                    and finished[0].error
                    and finished[0].result is None
                ):
                    rejected += 1
        return {"tried": tried, "rejected": rejected, "slowest_s": slowest, "corpus": len(PAYLOADS)}

    return asyncio.run(main())


async def _wave(port: int, n: int, tag: str) -> dict[str, Any]:
    prompts = [f"{tag}{i:05d} {uuid.uuid4().hex} 日本語" for i in range(n)]
    peak = 0
    done = asyncio.Event()

    async def watch() -> None:
        nonlocal peak
        while not done.is_set():
            result = await request(port, "GET", "/_soak/stats", limit_s=10)
            if result.status == 200:
                peak = max(peak, json.loads(result.body)["active_runs"])
            await asyncio.sleep(0.05)

    watcher = asyncio.create_task(watch())
    started = time.monotonic()
    results = await asyncio.gather(
        *[
            request(port, "POST", ENDPOINTS[i % 3], body_for(ENDPOINTS[i % 3], p))
            for i, p in enumerate(prompts)
        ]
    )
    elapsed = time.monotonic() - started
    done.set()
    await watcher
    errors = crosstalk = 0
    for i, (prompt, result) in enumerate(zip(prompts, results, strict=True)):
        verdict, answer = outcome(ENDPOINTS[i % 3], result)
        if verdict != "finished":
            errors += 1
        elif answer != "You said: " + prompt:
            crosstalk += 1
    return {"n": n, "errors": errors, "crosstalk": crosstalk, "peak": peak, "seconds": elapsed}


def run_concurrency(levels: Sequence[int]) -> list[dict[str, Any]]:
    out = []
    for level in levels:
        with tempfile.TemporaryDirectory() as tmp:
            # ~2.5 s per run (10 chunks at 4/s), so a whole wave is in flight at once
            server = ServerProcess(Path(tmp) / "c.db", rate=4.0)
            try:
                before = server.stats()["rss"]
                row = asyncio.run(_wave(server.port, level, "p"))
                row["rss_per_stream_kb"] = None
                after = server.stats()
                row["rss_per_stream_kb"] = max(0, after["rss"] - before) / level / 1024
                out.append(row)
            finally:
                server.stop()
    return out


async def _soak(port: int, runs: int, concurrency: int) -> Counter[str]:
    counts: Counter[str] = Counter()
    sessions: list[str] = []
    next_run = 0

    async def client() -> None:
        nonlocal next_run
        while next_run < runs:
            i = next_run
            next_run += 1
            path = ENDPOINTS[i % 3]
            kind = "long" if i % 10 == 7 else "fail" if i % 10 == 3 else "ok"
            prompt = f"{'' if kind == 'ok' else kind + ' '}q{i} {uuid.uuid4().hex[:8]}"
            session_id = (
                sessions[i % len(sessions)] if sessions and path != "/v1/chat/completions" and i % 2 else None
            )
            result = await request(
                port, "POST", path, body_for(path, prompt, session_id), abandon_after_body=kind == "long"
            )
            if kind == "long":
                counts["abandoned" if result.status == 200 else "unexpected"] += 1
                continue
            verdict, answer = outcome(path, result)
            if kind == "fail":
                counts["failure reported" if verdict == "error" else "unexpected"] += 1
            elif verdict == "finished" and answer == "You said: " + prompt:
                counts["ok"] += 1
                if path != "/v1/chat/completions" and len(sessions) < 64 and "x-session-id" in result.headers:
                    sessions.append(result.headers["x-session-id"])
            else:
                counts["unexpected"] += 1

    await asyncio.gather(*[client() for _ in range(concurrency)])
    return counts


def measure_leaks(
    runs: int,
    *,
    warmup: int = 500,
    concurrency: int = 8,
    forget_warmup: bool = False,
    second_pass: bool = False,
) -> dict[str, Any]:
    """Start a server, warm it up with `warmup` runs, take its stats (`before`), do `runs`
    short runs, let it settle, take its stats as deployed (`after`: finished runs are still
    retained for resume) and after forgetting them (`after_forget`).

    `forget_warmup` forgets the warm-up's runs before `before`, so `before` is the high-water
    mark of memory for that many retained runs: what is left of growth after the second batch
    is a leak, not retention (freed Python memory is reused, not returned to the OS).
    `second_pass` then does `runs` more runs and takes `after_second` (forgotten too)."""
    with tempfile.TemporaryDirectory() as tmp:
        server = ServerProcess(Path(tmp) / "soak.db")
        try:
            asyncio.run(_soak(server.port, warmup, concurrency))
            time.sleep(0.5)
            before = server.stats(forget=forget_warmup)
            started = time.monotonic()
            counts = asyncio.run(_soak(server.port, runs, concurrency))
            elapsed = time.monotonic() - started
            time.sleep(1.0)  # let abandoned runs store their turns
            after = server.stats()
            after_forget = server.stats(forget=True)
            after_second = None
            if second_pass:
                counts.update(asyncio.run(_soak(server.port, runs, concurrency)))
                time.sleep(1.0)
                after_second = server.stats(forget=True)
        finally:
            server.stop()
    deltas = {key: after[key] - before[key] for key in ("fds", "threads", "os_threads", "tasks", "rss")}
    return {
        "runs": runs,
        "seconds": elapsed,
        "counts": dict(counts),
        "before": before,
        "after": after,
        "after_forget": after_forget,
        "after_second": after_second,
        "deltas": deltas,
        "rss_growth": deltas["rss"] / before["rss"],
    }


# --------------------------------------------------------------------------- the table


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


# check column: PASS (meets the requirement), FAIL, BUG (a known bug: a strict-xfail test with its
# fix proposed; it turns into a failure of the suite as soon as the fix lands, to be un-marked)


def print_table(figures: dict[str, Any]) -> None:
    rows: list[tuple[str, str, str]] = []
    faults = figures.get("faults")
    if faults and "groups" in faults:
        total = Counter[str]()
        for key, label, _ in [*_GROUPS, ("other", "other", ())]:
            counts = faults["groups"].get(key)
            if not counts:
                continue
            total.update(counts)
            injected = sum(counts.values()) - counts["skipped"]
            known = f", {counts['xfailed']} known bug(s)" if counts["xfailed"] else ""
            failed = f", {counts['failed']} FAILED" if counts["failed"] else ""
            verdict = "FAIL" if counts["failed"] else "BUG" if counts["xfailed"] else "PASS"
            rows.append((label, f"{counts['passed']}/{injected} survived{known}{failed}", verdict))
        rows.append((
            "faults and hostile inputs, all",
            f"{sum(total.values()) - total['skipped']} injected, {total['passed']} survived, "
            f"{total['xfailed']} known bugs (strict xfail), {total['failed']} failed, "
            f"in {faults['seconds']:.0f} s",
            "FAIL" if total["failed"] else "BUG" if total["xfailed"] else "PASS",
        ))  # fmt: skip
        for failure in faults["failures"]:
            print("FAILED:", failure)
    elif faults:
        rows.append(("fault suites", "did not run: " + faults["error"][-300:], "FAIL"))
    payloads = figures.get("payloads")
    if payloads:
        rows.append((
            "calculator payloads through the agent (JSON + native tools)",
            f"{payloads['tried']} tried ({payloads['corpus']} x 2), {payloads['rejected']} rejected, "
            f"slowest run {payloads['slowest_s'] * 1000:.0f} ms",
            _verdict(payloads["rejected"] == payloads["tried"] and payloads["slowest_s"] < 2.0),
        ))  # fmt: skip
    for row in figures.get("concurrency", []):
        rows.append((
            f"{row['n']} simultaneous streams (raw/SSE/OpenAI)",
            f"peak {row['peak']} in flight, {row['errors']} errors, {row['crosstalk']} cross-talk, "
            f"{row['seconds']:.1f} s, ~{row['rss_per_stream_kb']:.0f} KB RSS/stream",
            _verdict(row["errors"] == 0 and row["crosstalk"] == 0),
        ))  # fmt: skip
    soak = figures.get("soak")
    if soak:
        d, b = soak["deltas"], soak["before"]
        counts = soak["counts"]
        rows.append((
            f"soak: {soak['runs']:,} short runs, 8 clients" + (" (x2)" if soak.get("after_second") else ""),
            f"{soak['runs'] / soak['seconds']:.0f} runs/s; ok {counts.get('ok', 0)}, abandoned "
            f"{counts.get('abandoned', 0)}, failures reported {counts.get('failure reported', 0)}, "
            f"unexpected {counts.get('unexpected', 0)}",
            _verdict(not counts.get("unexpected")),
        ))  # fmt: skip
        rows.append((
            "leak deltas after the soak (as deployed)",
            f"fds {b['fds']} -> {soak['after']['fds']} ({d['fds']:+d}), threads {b['threads']} -> "
            f"{soak['after']['threads']} ({d['threads']:+d}), asyncio tasks {b['tasks']} -> "
            f"{soak['after']['tasks']} ({d['tasks']:+d}), RSS {b['rss'] / 2**20:.1f} -> "
            f"{soak['after']['rss'] / 2**20:.1f} MB ({soak['rss_growth']:+.1%}); finished runs retained "
            f"{b['runs_retained']} -> {soak['after']['runs_retained']}",
            _verdict(d["fds"] <= 2 and d["threads"] <= 1 and d["tasks"] <= 1 and soak["rss_growth"] < 0.10),
        ))  # fmt: skip
        second, first = soak.get("after_second"), soak["after_forget"]
        if second:
            growth = (second["rss"] - first["rss"]) / first["rss"]
            rows.append((
                f"leak check: {soak['runs']:,} more runs, retained runs forgotten",
                f"fds {second['fds'] - first['fds']:+d}, threads {second['threads'] - first['threads']:+d}, "
                f"tasks {second['tasks'] - first['tasks']:+d}, RSS {first['rss'] / 2**20:.1f} -> "
                f"{second['rss'] / 2**20:.1f} MB ({growth:+.1%})",
                _verdict(
                    second["fds"] - first["fds"] <= 2 and second["threads"] - first["threads"] <= 1
                    and second["tasks"] - first["tasks"] <= 1 and growth < 0.02
                ),
            ))  # fmt: skip
    rows += round2_rows(figures)
    width = max(len(r[0]) for r in rows) if rows else 10
    vwidth = max(len(r[1]) for r in rows) if rows else 10
    print()
    print(f"| {'figure':<{width}} | {'value':<{vwidth}} | check |")
    print(f"| {'-' * width} | {'-' * vwidth} | ----- |")
    for name, value, verdict in rows:
        print(f"| {name:<{width}} | {value:<{vwidth}} | {verdict:<5} |")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phases", default="faults,payloads,concurrency,soak,slowclients,limits,uploads")
    parser.add_argument("--runs", type=int, default=10_000, help="short runs in the soak (default 10000)")
    parser.add_argument("--levels", default="200,1000,5000", help="simultaneous streams per wave")
    parser.add_argument("--quick", action="store_true", help="2,000 soak runs, one 200-stream wave")
    parser.add_argument("--model", action="store_true", help="faults: also the real llama.cpp model tests")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.levels = min(args.runs, 2000), "200"
    phases = {p.strip() for p in args.phases.split(",") if p.strip()}
    figures: dict[str, Any] = {}
    print(f"tokenrelay soak: phases {sorted(phases)}, python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    if "faults" in phases:
        print("faults: running the fault, hostile-input and fuzz suites ...", flush=True)
        figures["faults"] = run_fault_suites(model=args.model)
    if "payloads" in phases:
        print("payloads: the calculator corpus through the agent ...", flush=True)
        figures["payloads"] = run_payloads()
    if "concurrency" in phases:
        levels = [int(x) for x in args.levels.split(",") if x.strip()]
        print(f"concurrency: waves of {levels} simultaneous streams ...", flush=True)
        figures["concurrency"] = run_concurrency(levels)
    if "soak" in phases:
        print(f"soak: {args.runs:,} short runs ...", flush=True)
        figures["soak"] = measure_leaks(args.runs, second_pass=True)
    if "slowclients" in phases:
        print(
            "slowclients: the outside attack's slow and greedy connections, shipped vs reference ...",
            flush=True,
        )
        figures["slowclients"] = run_slow_clients()
    if "limits" in phases:
        print("limits: 300 runs and 2,000 sessions from one key, shipped vs reference ...", flush=True)
        figures["limits"] = run_limits()
    if "uploads" in phases:
        print("uploads: six 990 KB documents with the embedded model, shipped vs reference ...", flush=True)
        figures["uploads"] = run_uploads()
    print_table(figures)
    if args.json:
        args.json.write_text(
            json.dumps(figures, default=lambda o: dict(o) if isinstance(o, Counter) else str(o), indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
