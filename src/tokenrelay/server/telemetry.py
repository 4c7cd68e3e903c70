"""Operations: Prometheus metrics (`GET /metrics`) and one log line per finished run.

Metrics (prometheus-client; every one labelled `backend`, the name of the model backend):

| name | type | what |
| --- | --- | --- |
| `tokenrelay_time_to_first_token_seconds` | histogram | run start → its first answer token |
| `tokenrelay_inter_token_latency_seconds` | histogram | gap between consecutive answer tokens |
| `tokenrelay_run_duration_seconds` | histogram | run start → its end (label `status`) |
| `tokenrelay_runs_total` | counter | finished runs (`status`: complete, failed, cancelled; `finish_reason`) |
| `tokenrelay_run_errors_total` | counter | runs that ended with an error (`code`, as in the error event) |
| `tokenrelay_prompt_tokens_total` | counter | prompt tokens, as the backend reported them |
| `tokenrelay_generation_tokens_total` | counter | generated tokens, as the backend reported them |
| `tokenrelay_runs_running` | gauge | runs in flight |
| `tokenrelay_backend_queue_depth` | gauge | model calls waiting for the embedded llama.cpp model |

The per-token path stays cheap: a measured run appends one `time.monotonic()` per answer
token to an array (runs/channel.py); everything else happens once, when the run ends, and the
inter-token histogram is added bucket by bucket, not value by value. The gauges are sampled
(every second, and at each scrape).

With several worker processes (`tokenrelay serve --workers N`), prometheus-client's
multiprocess mode aggregates them: `serve` points PROMETHEUS_MULTIPROC_DIR at a fresh
directory, and any worker's `/metrics` answers for all of them.

The run log line (logger `tokenrelay.runs`, INFO): `event=run_finished` with the run and
session ids, backend, status, finish reason or error code, token counts, time to first token
and duration. Never the user's text, the answer, an error message (it may quote the upstream
server, which may quote the prompt) or an API key.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from array import array
from bisect import bisect_right
from collections.abc import Sequence
from functools import partial
from itertools import islice, pairwise
from operator import sub
from typing import Any, Final

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from tokenrelay.events import RunError, RunFinished
from tokenrelay.runs import RunChannel
from tokenrelay.server.auth import require_owner
from tokenrelay.server.logs import log_fields

__all__ = ["CONTENT_TYPE", "BatchHistogram", "Metrics", "RunMonitor", "queue_depth", "router", "sample_every"]

#: the Prometheus text format
CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

TTFT_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0)
ITL_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)
DURATION_BUCKETS: Final = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0)

run_log = logging.getLogger("tokenrelay.runs")


class BatchHistogram(Histogram):
    """A histogram that can take many observations at once, already sorted into its buckets."""

    def observe_counts(self, counts: Sequence[int], total: float) -> None:
        """Add `counts[i]` observations to bucket i (upper bounds as given, +Inf last) and
        `total` to the sum: the state `observe` would reach value by value, in one lock
        round per non-empty bucket."""
        self._raise_if_not_observable()  # type: ignore[no-untyped-call]
        if len(counts) != len(self._buckets):
            raise ValueError(f"{len(counts)} counts for {len(self._buckets)} buckets")
        self._sum.inc(total)
        for value, count in zip(self._buckets, counts, strict=True):
            if count:
                value.inc(count)


class Metrics:
    """This process's metric objects, in a registry of their own (apps never share one)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.ttft = Histogram(
            "tokenrelay_time_to_first_token_seconds", "Time from a run's start to its first answer token.",
            ["backend"], buckets=TTFT_BUCKETS, registry=r,
        )  # fmt: skip
        self.itl = BatchHistogram(
            "tokenrelay_inter_token_latency_seconds", "Time between consecutive answer tokens of a run.",
            ["backend"], buckets=ITL_BUCKETS, registry=r,
        )  # fmt: skip
        self.itl_bounds = (*ITL_BUCKETS, float("inf"))
        self.duration = Histogram(
            "tokenrelay_run_duration_seconds", "Time from a run's start to its end.",
            ["backend", "status"], buckets=DURATION_BUCKETS, registry=r,
        )  # fmt: skip
        self.runs = Counter(
            "tokenrelay_runs", "Finished runs.", ["backend", "status", "finish_reason"], registry=r
        )
        self.errors = Counter(
            "tokenrelay_run_errors",
            "Runs that ended with an error, by error code.",
            ["backend", "code"],
            registry=r,
        )
        self.prompt_tokens = Counter(
            "tokenrelay_prompt_tokens",
            "Prompt tokens, as the backend reported them.",
            ["backend"],
            registry=r,
        )
        self.generation_tokens = Counter(
            "tokenrelay_generation_tokens", "Generated tokens, as the backend reported them.", ["backend"],
            registry=r,
        )  # fmt: skip
        self.running = Gauge(
            "tokenrelay_runs_running", "Runs in flight.", ["backend"], registry=r, multiprocess_mode="livesum"
        )
        self.queued = Gauge(
            "tokenrelay_backend_queue_depth",
            "Model calls waiting for the model (the embedded llama.cpp model runs one at a time).",
            ["backend"], registry=r, multiprocess_mode="livesum",
        )  # fmt: skip

    def exposition(self) -> bytes:
        """The Prometheus text format: this process's metrics, or every worker's in
        multiprocess mode."""
        directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if directory:
            from prometheus_client.multiprocess import MultiProcessCollector

            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)


class RunMonitor:
    """Measures the runs of one app: metrics (when `metrics` is set) and the run log line."""

    def __init__(self, backend: str, metrics: Metrics | None) -> None:
        self.backend = backend
        self.metrics = metrics
        self._children: dict[tuple[Any, ...], Any] = {}  # labelled children: `labels()` takes a lock

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (metric, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(self.backend, *labels)
        return child

    def track(self, channel: RunChannel) -> None:
        """Measure `channel`'s run from now on (call it as the run is registered)."""
        if self.metrics is None and not run_log.isEnabledFor(logging.INFO):
            return
        channel.measure(partial(self._finished, time.monotonic()), token_times=self.metrics is not None)

    def sample(self, running: int, queued: int) -> None:
        if self.metrics is not None:
            self.metrics.running.labels(self.backend).set(running)
            self.metrics.queued.labels(self.backend).set(queued)

    def _finished(self, started: float, channel: RunChannel) -> None:
        duration = time.monotonic() - started
        last = channel.events[-1]
        times = channel.token_times
        ttft: float | None = None
        if times:
            ttft = times[0] - started
        elif isinstance(last, RunFinished):
            ttft = last.timings.first_token_s
        if isinstance(last, RunFinished):
            status, reason, code = "complete", last.finish_reason, None
            prompt, generated = last.usage.prompt_tokens, last.usage.completion_tokens
        else:
            assert isinstance(last, RunError)
            status = "cancelled" if last.code == "cancelled" else "failed"
            reason, code, prompt, generated = "error", last.code, 0, 0
        if self.metrics is not None:
            self._record(self.metrics, times, ttft, duration, status, reason, code, prompt, generated)
        log_fields(
            run_log,
            logging.INFO,
            {
                "event": "run_finished",
                "run_id": channel.run_id,
                "session_id": channel.session_id,
                "backend": self.backend,
                "status": status,
                "finish_reason": reason if status == "complete" else None,
                "code": code,
                "prompt_tokens": prompt,
                "completion_tokens": generated,
                "ttft_s": round(ttft, 4) if ttft is not None else None,
                "duration_s": round(duration, 4),
            },
        )

    def _record(
        self,
        m: Metrics,
        times: array[float] | None,
        ttft: float | None,
        duration: float,
        status: str,
        reason: str,
        code: str | None,
        prompt: int,
        generated: int,
    ) -> None:
        child = self._child
        if ttft is not None:
            child(m.ttft).observe(ttft)
        if times is not None and len(times) > 1:
            # the gaps, sorted (in C); a bucket holds the gaps <= its bound that no lower one holds
            gaps = sorted(map(sub, islice(times, 1, None), times))
            upto = [bisect_right(gaps, bound) for bound in m.itl_bounds]
            counts = [upto[0], *(b - a for a, b in pairwise(upto))]
            child(m.itl).observe_counts(counts, times[-1] - times[0])
        child(m.duration, status).observe(duration)
        child(m.runs, status, reason).inc()
        if code is not None:
            child(m.errors, code).inc()
        if prompt:
            child(m.prompt_tokens).inc(prompt)
        if generated:
            child(m.generation_tokens).inc(generated)


def queue_depth(backend: object) -> int:
    """Model calls waiting for `backend` (backends that queue say so with `queue_depth`)."""
    depth = getattr(backend, "queue_depth", 0)
    return depth if isinstance(depth, int) else 0


router = APIRouter(tags=["service"])


def sample(app: Any) -> None:
    """Refresh the gauges of `app` (a tokenrelay app whose lifespan has started)."""
    runner = app.state.runner
    backend = runner.backend if runner.has_backend else None  # (an agent may have none)
    app.state.monitor.sample(app.state.registry.active_count(), queue_depth(backend))


async def sample_every(app: Any, interval_s: float) -> None:
    while True:
        await asyncio.sleep(interval_s)
        sample(app)


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    description="The Prometheus text format. Needs an API key when keys are set, unless "
    "TOKENRELAY_METRICS_PUBLIC is true; 404 when TOKENRELAY_METRICS is false.",
    response_class=PlainTextResponse,
)
async def metrics(request: Request) -> Response:
    settings = request.app.state.settings
    if settings.api_keys and not settings.metrics_public:
        await require_owner(request)
    found: Metrics | None = request.app.state.metrics
    if found is None:
        raise HTTPException(404, "metrics are off (TOKENRELAY_METRICS=false)")
    sample(request.app)
    return Response(found.exposition(), media_type=CONTENT_TYPE)
