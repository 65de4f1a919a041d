"""Prometheus metrics of the process, served on their own port (settings.metrics_port).

What callers see (requests by service, method and code; latency; in flight; bytes received),
what was refused and why (`record_rejection`), the Triton circuit breaker's state
(`set_breaker_state`), the server-side time of each Triton call and of each store operation
(`time_store`), and, per Triton model, what Triton itself counts (batch sizes, queue and compute
time) from its statistics API, polled in the background (`TritonStatsPoller`).

The metric objects are process-wide, as Prometheus clients expect; tests that start several
servers in one process read differences. With several server processes (`--workers N`,
server/supervisor.py) each worker runs in prometheus_client's multiprocess mode: the supervisor
sets PROMETHEUS_MULTIPROC_DIR before a worker imports prometheus_client, the worker's figures go
to files there, and the supervisor alone serves /metrics from them (`serve_workers`) with
Triton's statistics, which it polls itself. Counters and histograms add up across workers;
each gauge says how (`multiprocess_mode`, ignored in a single process).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from server import call_records

log = logging.getLogger(__name__)

# Latency buckets from a 2-core CPU box (tens of ms) to a loaded GPU host (seconds).
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

REQUESTS = Counter("vision_requests", "RPCs finished, by service, method and status code.",
                   ("service", "method", "code"))
LATENCY = Histogram("vision_request_duration_seconds", "RPC duration in the server, seconds.",
                    ("service", "method"), buckets=_LATENCY_BUCKETS)
IN_FLIGHT = Gauge("vision_requests_in_flight", "RPCs being served now.", ("service", "method"),
                  multiprocess_mode="livesum")
RECEIVED_BYTES = Counter("vision_request_bytes", "Request message bytes received (serialized).",
                         ("service", "method"))
REJECTIONS = Counter("vision_rejections", "Calls refused before any work, by reason "
                     "(auth_*, admission_*, limits_*).", ("reason",))
# Each worker has its own breaker: the worst state of the live workers is what alerts need.
BREAKER_STATE = Gauge("vision_triton_breaker_state",
                      "Triton circuit breaker: 0 closed, 1 half-open, 2 open.",
                      multiprocess_mode="livemax")
INFERENCE = Histogram("vision_triton_call_duration_seconds",
                      "One Triton inference call as the server sees it, seconds.", ("model",),
                      buckets=_LATENCY_BUCKETS)
STORE = Histogram("vision_store_duration_seconds", "One vector-store operation, seconds.",
                  ("operation",), buckets=_LATENCY_BUCKETS)

BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}

MULTIPROCESS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client reads it at import


def in_worker_files() -> bool:
    """True in one of several server processes: its figures go to the multiprocess files and
    the supervisor serves /metrics, so this process binds no metrics port."""
    return MULTIPROCESS_DIR_ENV in os.environ


def record_rejection(reason: str) -> None:
    """Counts one call refused for `reason` (e.g. "auth_invalid_key", "admission_full")."""
    REJECTIONS.labels(reason).inc()


def set_breaker_state(state: str) -> None:
    """For the circuit breaker: "closed", "half_open" or "open"."""
    BREAKER_STATE.set(BREAKER_STATES[state])


_inference_series: dict[str, Any] = {}  # INFERENCE's child per model: labels() costs per call


@contextlib.contextmanager
def time_inference(model: str) -> Iterator[None]:
    """Times one Triton call: the histogram, and the inference time of the call being served."""
    start = time.perf_counter()
    try:
        yield
    finally:
        elapsed = time.perf_counter() - start
        series = _inference_series.get(model)
        if series is None:
            series = _inference_series[model] = INFERENCE.labels(model)
        series.observe(elapsed)
        call_records.add_inference(elapsed)


@contextlib.contextmanager
def time_store(operation: str) -> Iterator[None]:
    """Times one store operation ("upsert", "search", "get", "delete", ...)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        STORE.labels(operation).observe(time.perf_counter() - start)


def serve(host: str, port: int) -> tuple[int, Any]:
    """Starts the /metrics HTTP endpoint in a daemon thread; returns its bound port and the
    server (whose `shutdown` stops it). Port 0 picks a free one."""
    httpd, _thread = start_http_server(port, addr=host)
    bound: int = httpd.server_port
    return bound, httpd


def serve_workers(host: str, port: int, directory: str) -> tuple[int, Any]:
    """For the supervisor: /metrics summed over the workers' multiprocess files in `directory`,
    plus Triton's statistics (TRITON_STATS); returns the bound port and the server."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    registry.register(TRITON_STATS)
    httpd, _thread = start_http_server(port, addr=host, registry=registry)
    bound: int = httpd.server_port
    return bound, httpd


def forget_worker(pid: int, directory: str) -> None:
    """A worker exited: its live gauges (in flight, breaker state) stop counting; its counters
    and histograms stay in the sums."""
    multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


def stop_serving(httpd: Any) -> None:
    httpd.shutdown()
    httpd.server_close()


# Triton's statistics are cumulative since it started: exposed as counters as they are, so
# Prometheus' rate() and its reset handling apply (a Triton restart is a counter reset).
_DURATIONS = ("queue", "compute_input", "compute_infer", "compute_output")


class TritonStatsCollector(Collector):
    """Per model, the last statistics Triton reported."""

    def __init__(self) -> None:
        self._stats: list[dict[str, Any]] = []
        self.polls = 0

    def update(self, model_stats: list[dict[str, Any]]) -> None:
        self._stats = model_stats
        self.polls += 1

    def collect(self) -> Iterable[Metric]:
        labels = ["model", "version"]
        inferences = CounterMetricFamily(
            "vision_triton_inferences", "Images Triton inferred (batch items), per model.",
            labels=labels)
        executions = CounterMetricFamily(
            "vision_triton_executions", "Model executions (batches) Triton ran, per model.",
            labels=labels)
        batches = CounterMetricFamily(
            "vision_triton_batch_executions",
            "Executions per batch size, per model: the batches Triton's dynamic batcher formed.",
            labels=[*labels, "batch_size"])
        seconds = {name: CounterMetricFamily(
            f"vision_triton_{name}_seconds", f"Time in Triton's {name} phase, seconds (sum "
            "over requests).", labels=labels) for name in _DURATIONS}
        mean_batch = GaugeMetricFamily(
            "vision_triton_mean_batch_size", "Inferences per execution since Triton started.",
            labels=labels)
        for model in self._stats:
            key = [str(model.get("name", "")), str(model.get("version", ""))]
            inferred, executed = _int(model.get("inference_count")), _int(
                model.get("execution_count"))
            inferences.add_metric(key, inferred)
            executions.add_metric(key, executed)
            if executed:
                mean_batch.add_metric(key, inferred / executed)
            phases = model.get("inference_stats", {})
            for name in _DURATIONS:
                seconds[name].add_metric(key, _int(phases.get(name, {}).get("ns")) / 1e9)
            for batch in model.get("batch_stats", []):
                count = _int(batch.get("compute_infer", {}).get("count"))
                batches.add_metric([*key, str(_int(batch.get("batch_size")))], count)
        yield from (inferences, executions, batches, *seconds.values(), mean_batch)


def _int(value: Any) -> int:
    # Triton's JSON carries uint64 as strings (protobuf's JSON mapping).
    return int(value or 0)


TRITON_STATS = TritonStatsCollector()
REGISTRY.register(TRITON_STATS)


class TritonStatsPoller:
    """Reads Triton's inference statistics every interval into TRITON_STATS."""

    def __init__(self, read: Any, interval_s: float) -> None:
        self._read = read  # async () -> {"model_stats": [...]}
        self._interval_s = interval_s

    async def run(self) -> None:
        while True:
            await self.poll_once()
            await asyncio.sleep(self._interval_s)

    async def poll_once(self) -> None:
        try:
            answer: Mapping[str, Any] = await self._read()
        except Exception as exc:  # noqa: BLE001 (a failed poll keeps the last figures)
            log.warning("triton statistics not read: %s", type(exc).__name__)
            return
        TRITON_STATS.update(list(answer.get("model_stats", [])))
