"""Operations: `/metrics` scraped from a real server and parsed with prometheus-client's own
parser, the one-line run summary in the logs, and `tokenrelay serve --log-level` /
`--workers 2` as a user starts them.

What the numbers must be is known from the runs the tests make (scripted backends: known
token counts, a failure, a cancel), so every assertion is exact except latencies (only that
they were observed).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.parser import text_string_to_metric_families

from replies import final
from server_fixture import LiveServer, free_port, make_app
from tokenrelay.server.logs import LogfmtFormatter, logfmt
from tokenrelay.server.telemetry import ITL_BUCKETS, BatchHistogram
from tokenrelay.testing import ScriptedBackend

SECRET_PROMPT = "my password is hunter2 東京"
ANSWER = 'Metrics, "quoted" } and 日本語'  # 30 characters: 10 tokens of 3


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str, **headers: str) -> Samples:
    response = httpx.get(url + "/metrics", headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    servers: list[LiveServer] = []

    def start(backend: ScriptedBackend, **settings: Any) -> LiveServer:
        server = LiveServer(make_app(tmp_path / f"t{len(servers)}.db", backend, **settings)).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def test_metrics_count_what_the_runs_did(serve: Callable[..., LiveServer]) -> None:
    backend = ScriptedBackend([final(ANSWER)], token_size=3)
    server = serve(backend)
    url = server.url
    with httpx.Client(timeout=30) as http:
        assert http.post(url + "/chat", json={"text": SECRET_PROMPT}).text == ANSWER
        assert http.post(url + "/chat", json={"text": "again", "stream": False}).json()["output"] == ANSWER
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        assert "[DONE]" in http.post(url + "/v1/chat/completions", json=body).text
        backend.fail_after = 2  # the next run fails mid-stream
        http.post(url + "/chat/events", json={"text": "fail"})

    samples = scrape(url)
    b = {"backend": "scripted"}
    assert value(samples, "tokenrelay_runs_total", status="complete", finish_reason="stop", **b) == 3
    assert value(samples, "tokenrelay_runs_total", status="failed", finish_reason="error", **b) == 1
    assert value(samples, "tokenrelay_run_errors_total", code="backend", **b) == 1
    # every scripted call reports its chunks as completion tokens
    generated = sum(call.chunks_sent for call in backend.calls if call.finished)
    assert value(samples, "tokenrelay_generation_tokens_total", **b) == generated
    assert value(samples, "tokenrelay_prompt_tokens_total", **b) > 0
    # the three whole answers streamed token by token; the failed one never reached its answer
    ttft_count = value(samples, "tokenrelay_time_to_first_token_seconds_count", **b)
    assert ttft_count == 3
    itl_count = value(samples, "tokenrelay_inter_token_latency_seconds_count", **b)
    answer_tokens = itl_count + ttft_count  # n tokens per run give n - 1 gaps
    assert answer_tokens >= 3 * 2
    assert value(samples, "tokenrelay_inter_token_latency_seconds_bucket", le="+Inf", **b) == itl_count
    assert value(samples, "tokenrelay_run_duration_seconds_count", status="complete", **b) == 3
    assert value(samples, "tokenrelay_runs_running", **b) == 0
    assert value(samples, "tokenrelay_backend_queue_depth", **b) == 0


def test_running_and_cancelled_runs(serve: Callable[..., LiveServer]) -> None:
    backend = ScriptedBackend([final("word " * 200)], tokens_per_second=40, token_size=5)
    server = serve(backend)
    with (
        httpx.Client(timeout=30) as http,
        http.stream("POST", server.url + "/chat", json={"text": "long"}) as r,
    ):
        run_id = r.headers["x-run-id"]
        chunks = r.iter_bytes()  # kept: a discarded iterator closes the response
        next(chunks)  # the run is streaming
        assert value(scrape(server.url), "tokenrelay_runs_running", backend="scripted") == 1
        assert http.post(server.url + f"/runs/{run_id}/cancel").json()["cancelled"] is True
    deadline = time.monotonic() + 10
    while (samples := scrape(server.url)) and not value(
        samples, "tokenrelay_runs_total", backend="scripted", status="cancelled", finish_reason="error"
    ):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert value(samples, "tokenrelay_run_errors_total", backend="scripted", code="cancelled") == 1
    assert value(samples, "tokenrelay_runs_running", backend="scripted") == 0


def test_metrics_need_a_key_when_keys_are_on(serve: Callable[..., LiveServer]) -> None:
    server = serve(ScriptedBackend([final("x")]), api_keys=frozenset({"k1"}))
    response = httpx.get(server.url + "/metrics", timeout=30)
    assert response.status_code == 401 and "API key" in response.json()["error"]["message"]
    scrape(server.url, authorization="Bearer k1")
    public = serve(ScriptedBackend([final("x")]), api_keys=frozenset({"k1"}), metrics_public=True)
    scrape(public.url)


def test_metrics_can_be_turned_off(serve: Callable[..., LiveServer]) -> None:
    server = serve(ScriptedBackend([final("x")]), metrics=False)
    assert httpx.post(server.url + "/chat", json={"text": "hi"}, timeout=30).text == "x"
    response = httpx.get(server.url + "/metrics", timeout=30)
    assert response.status_code == 404 and "TOKENRELAY_METRICS" in response.json()["error"]["message"]


# --------------------------------------------------------------------------- the run log line


def parse_logfmt(line: str) -> dict[str, str]:
    """A test-side logfmt reader: key=value, values bare or JSON-quoted."""
    fields: dict[str, str] = {}
    for match in re.finditer(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)', line):
        key, raw = match.groups()
        fields[key] = json.loads(raw) if raw.startswith('"') else raw
    rebuilt = " ".join(m.group(0) for m in re.finditer(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)', line))
    assert rebuilt == line, f"not logfmt: {line!r}"
    return fields


def test_one_summary_line_per_run_without_user_text(
    serve: Callable[..., LiveServer], caplog: pytest.LogCaptureFixture
) -> None:
    backend = ScriptedBackend([final(ANSWER)], token_size=3)
    server = serve(backend)
    with caplog.at_level(logging.INFO, logger="tokenrelay.runs"):
        response = httpx.post(server.url + "/chat", json={"text": SECRET_PROMPT}, timeout=30)
        backend.fail_after = 1
        httpx.post(server.url + "/chat/events", json={"text": SECRET_PROMPT}, timeout=30)
        deadline = time.monotonic() + 5
        while len([r for r in caplog.records if r.name == "tokenrelay.runs"]) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    lines = [LogfmtFormatter().format(r) for r in caplog.records if r.name == "tokenrelay.runs"]
    ok, failed = (parse_logfmt(line) for line in lines)
    assert ok["event"] == "run_finished" and ok["level"] == "info" and ok["logger"] == "tokenrelay.runs"
    assert ok["run_id"] == response.headers["x-run-id"]
    assert ok["session_id"] == response.headers["x-session-id"]
    assert (ok["backend"], ok["status"], ok["finish_reason"]) == ("scripted", "complete", "stop")
    assert int(ok["completion_tokens"]) > 0 and int(ok["prompt_tokens"]) > 0
    assert float(ok["ttft_s"]) <= float(ok["duration_s"])
    assert (failed["status"], failed["code"]) == ("failed", "backend") and "finish_reason" not in failed
    for line in lines:
        assert "hunter2" not in line and "東京" not in line and "quoted" not in line
        assert "scripted backend failure" not in line  # error messages may quote the upstream


@settings(max_examples=200, deadline=None)
@given(st.text(), st.dictionaries(st.from_regex(r"[a-z_]{1,8}", fullmatch=True), st.text(), max_size=4))
def test_logfmt_lines_are_one_line_and_read_back(message: str, fields: dict[str, str]) -> None:
    record = logging.LogRecord("tokenrelay.x", logging.WARNING, __file__, 1, "%s", (message,), None)
    line = LogfmtFormatter().format(record)
    assert "\n" not in line and "\r" not in line
    assert parse_logfmt(line)["msg"] == message
    structured = logfmt({"event": "e", **fields})
    assert "\n" not in structured
    parsed = parse_logfmt(structured)
    assert parsed == {"event": "e", **fields} or "event" in fields


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=10, allow_nan=False), max_size=60))
def test_batch_observations_equal_one_by_one(gaps: list[float]) -> None:
    one, batch = CollectorRegistry(), CollectorRegistry()
    reference = Histogram("h", "h", buckets=ITL_BUCKETS, registry=one)
    for gap in gaps:
        reference.observe(gap)
    bounds = (*ITL_BUCKETS, float("inf"))
    counts = [0] * len(bounds)
    for gap in gaps:
        counts[next(i for i, bound in enumerate(bounds) if gap <= bound)] += 1
    BatchHistogram("h", "h", buckets=ITL_BUCKETS, registry=batch).observe_counts(counts, sum(gaps))

    def state(registry: CollectorRegistry) -> list[tuple[str, dict[str, str], float]]:
        return [
            (s.name, s.labels, round(s.value, 9))
            for family in registry.collect()
            for s in family.samples
            if not s.name.endswith("_created")
        ]

    assert state(batch) == state(reference)


# --------------------------------------------------------------------------- tokenrelay serve


def _tokenrelay() -> list[str]:
    exe = shutil.which("tokenrelay", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "tokenrelay.cli"]


def _serve(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TOKENRELAY_", "PROMETHEUS_"))}
    env["PYTHONIOENCODING"] = "utf-8"
    command = [*_tokenrelay(), "serve", "--model", "scripted:" + final(ANSWER), "--port", str(port)]
    command += ["--db", str(tmp_path / "serve.db"), *args]
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True, encoding="utf-8")
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, process.communicate()[1]
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "tokenrelay serve did not start"
        time.sleep(0.1)


def _stop(process: subprocess.Popen[str]) -> list[str]:
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)
    return err.splitlines()


def test_serve_logs_logfmt_at_the_chosen_level(tmp_path: Path) -> None:
    process, url = _serve(tmp_path, "--log-level", "info")
    try:
        assert httpx.post(url + "/chat", json={"text": SECRET_PROMPT}, timeout=30).text == ANSWER
    finally:
        lines = _stop(process)
    parsed = [parse_logfmt(line) for line in lines]  # every line, uvicorn's too
    runs = [p for p in parsed if p.get("event") == "run_finished"]
    assert len(runs) == 1 and runs[0]["status"] == "complete"
    assert any(p["logger"].startswith("uvicorn") for p in parsed)
    assert not any("hunter2" in line for line in lines)

    process, url = _serve(tmp_path, "--log-level", "warning")
    try:
        assert httpx.post(url + "/chat", json={"text": "hi"}, timeout=30).text == ANSWER
    finally:
        lines = _stop(process)
    assert not any("run_finished" in line for line in lines)


def test_serve_with_two_workers_reports_both_in_metrics(tmp_path: Path) -> None:
    process, url = _serve(tmp_path, "--workers", "2", "--log-level", "warning")
    try:
        workers: set[str] = set()
        runs = 0
        while runs < 6 or len(workers) < 2:  # a new connection each: the kernel spreads them
            assert runs < 100, f"every connection went to one worker: {workers}"
            with httpx.Client(timeout=30) as http:
                workers.add(http.get(url + "/health").json()["worker"])
                assert http.post(url + "/chat", json={"text": "hi"}).text == ANSWER
            runs += 1
        samples = scrape(url)  # one worker answers for both
        complete = {"backend": "scripted", "status": "complete", "finish_reason": "stop"}
        assert value(samples, "tokenrelay_runs_total", **complete) == runs
        assert value(samples, "tokenrelay_time_to_first_token_seconds_count", backend="scripted") == runs
    finally:
        _stop(process)


# --------------------------------------------------------------------------- llama.cpp's queue


@pytest.mark.model
def test_the_llamacpp_queue_depth_is_exposed(tmp_path: Path) -> None:
    """Runs beyond the one the embedded model is generating for wait in its queue: /metrics
    says how many."""
    from tokenrelay.backends.llamacpp import LlamaCppBackend
    from tokenrelay.config import Settings
    from tokenrelay.server import create_app

    settings = Settings(db=f"sqlite:///{tmp_path}/q.db", max_tokens=400, tool_protocol="json")
    with LiveServer(create_app(settings, backend=LlamaCppBackend())) as server:
        body = {"text": "Write a very long story about a lighthouse keeper.", "resumable": True}
        run_ids = []
        for _ in range(3):  # detached runs: they go on after their response is closed
            with (
                httpx.Client(timeout=60) as http,
                http.stream("POST", server.url + "/chat/events", json=body) as r,
            ):
                run_ids.append(r.headers["x-run-id"])
        try:
            deadline = time.monotonic() + 60
            while True:
                samples = scrape(server.url)
                depth = value(samples, "tokenrelay_backend_queue_depth", backend="llamacpp")
                if depth == 2:
                    break
                assert time.monotonic() < deadline, "never saw two runs waiting for the model"
                time.sleep(0.05)
            assert value(samples, "tokenrelay_runs_running", backend="llamacpp") >= 2
        finally:
            for run_id in run_ids:
                httpx.post(server.url + f"/runs/{run_id}/cancel", timeout=30)
