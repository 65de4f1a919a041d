"""The load generator: worker processes (spawned), each running one asyncio loop with one target
(one reused channel) and N closed-loop calls in flight, for a fixed duration or request count,
all starting at the same instant; the parent splits a run over them and merges the results."""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import os
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Literal

from bench.inprocess import InProcessDetector
from bench.payloads import PayloadName, payload
from bench.stats import percentile
from bench.targets import TargetKind, make_target

Kind = TargetKind | Literal["inproc"]

START_MARGIN_S = 0.5  # the workers open their channels before this instant
ERROR_PAUSE_S = 0.01  # keeps a failing target from spinning the worker
MAX_ERRORS = 200
RESULT_GRACE_S = 180.0


@dataclass(frozen=True)
class Job:
    """One worker's share of a run."""

    kind: Kind
    address: str
    images: PayloadName
    concurrency: int
    start_at: float  # time.monotonic() instant, shared by all workers (CLOCK_MONOTONIC)
    duration_s: float | None
    count: int | None
    offset: int  # first image index, so workers do not send the same image in lockstep
    intra_op: int
    per_stream: int
    model: str | None


@dataclass
class WorkerResult:
    completed: int
    errors: int
    latencies_s: list[float]
    started: float
    finished: float
    first_error: str = ""


@dataclass(frozen=True)
class RunSpec:
    """A run: what to call, how many calls in flight in all, and for how long / how many."""

    kind: Kind
    address: str
    images: PayloadName
    concurrency: int
    duration_s: float | None = None
    count: int | None = None
    workers: int | None = None  # default: as many as there are calls in flight, up to the pool
    intra_op: int = 1
    per_stream: int = 1
    model: str | None = None  # see bench.targets.make_target


@dataclass
class Run:
    spec: RunSpec
    workers: int
    completed: int
    errors: int
    wall_s: float
    throughput: float  # images per second
    p50_ms: float
    p95_ms: float
    p99_ms: float
    first_error: str
    latencies_ms: list[float] = field(repr=False, default_factory=list)


class LoadGeneratorError(RuntimeError):
    """A worker died, hung, or every call of a run failed."""


async def _run_async(job: Job) -> WorkerResult:
    if job.kind == "inproc":
        raise ValueError("in-process jobs run synchronously")
    target = make_target(job.kind, job.address, job.images, job.per_stream, job.model,
                         job.concurrency)
    await target.open()
    await asyncio.sleep(max(0.0, job.start_at - time.monotonic()))
    start = time.monotonic()
    end = start + job.duration_s if job.duration_s is not None else math.inf
    tickets = job.count if job.count is not None else -1
    result = WorkerResult(0, 0, [], start, start)

    async def closed_loop(slot: int) -> None:
        nonlocal tickets
        index = job.offset + slot
        while result.errors < MAX_ERRORS:
            if job.count is not None:
                if tickets <= 0:
                    return
                tickets -= 1
            elif time.monotonic() >= end:
                return
            began = time.perf_counter()
            try:
                done = await target.call(index)
            except Exception as exc:  # noqa: BLE001 (counted and reported with the run)
                done = 0
                result.errors += 1
                result.first_error = result.first_error or repr(exc)[:300]
                await asyncio.sleep(ERROR_PAUSE_S)
            latency = time.perf_counter() - began
            if time.monotonic() > end:
                return  # finished after the window: neither counted nor timed
            if done:
                result.completed += done
                result.latencies_s.append(latency)
            index += job.concurrency

    await asyncio.gather(*(closed_loop(slot) for slot in range(job.concurrency)))
    result.finished = min(time.monotonic(), end)
    await target.close()
    return result


def _run_inprocess(job: Job, detectors: dict[int, InProcessDetector]) -> WorkerResult:
    detector = detectors.get(job.intra_op)
    if detector is None:
        detector = detectors[job.intra_op] = InProcessDetector(job.intra_op)
    images = payload(job.images)
    detector.detect(images[0])  # warm: first-run allocations stay out of the window
    time.sleep(max(0.0, job.start_at - time.monotonic()))
    start = time.monotonic()
    end = start + job.duration_s if job.duration_s is not None else math.inf
    result = WorkerResult(0, 0, [], start, start)
    index = job.offset
    while (job.count is None or result.completed < job.count) and time.monotonic() < end:
        began = time.perf_counter()
        detector.detect(images[index % len(images)])
        latency = time.perf_counter() - began
        if time.monotonic() > end:
            break
        result.completed += 1
        result.latencies_s.append(latency)
        index += 1
    result.finished = min(time.monotonic(), end)
    return result


async def _serve(conn: Connection) -> None:
    detectors: dict[int, InProcessDetector] = {}
    while True:
        job = await asyncio.to_thread(conn.recv)
        if job is None:
            return
        assert isinstance(job, Job)
        try:
            if job.kind == "inproc":
                result = _run_inprocess(job, detectors)
            else:
                result = await _run_async(job)
        except Exception as exc:  # noqa: BLE001 (sent back to the parent, which raises)
            result = WorkerResult(0, 1, [], 0.0, 0.0, f"worker failed: {exc!r}"[:300])
        conn.send(result)


def worker_main(conn: Connection, log_path: str) -> None:
    """Entry point of a spawned worker; native libraries' stderr chatter goes to the log."""
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 2)
    asyncio.run(_serve(conn))


def _shares(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


class LoadGenerator:
    """A pool of spawned worker processes, kept for the whole benchmark."""

    def __init__(self, workers: int, log_path: Path) -> None:
        context = multiprocessing.get_context("spawn")
        self._conns: list[Connection] = []
        self._processes: list[multiprocessing.process.BaseProcess] = []
        for i in range(workers):
            parent, child = context.Pipe()
            process = context.Process(target=worker_main, args=(child, str(log_path)),
                                      name=f"bench-load-{i}", daemon=True)
            process.start()
            child.close()
            self._conns.append(parent)
            self._processes.append(process)

    @property
    def size(self) -> int:
        return len(self._processes)

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self._processes if process.pid is not None]

    def run(self, spec: RunSpec) -> Run:
        workers = min(spec.workers or self.size, self.size, spec.concurrency)
        start_at = time.monotonic() + START_MARGIN_S
        slots = _shares(spec.concurrency, workers)
        counts = _shares(spec.count, workers) if spec.count is not None else [None] * workers
        offset = 0
        for conn, slot, count in zip(self._conns, slots, counts, strict=False):
            conn.send(Job(spec.kind, spec.address, spec.images, slot, start_at, spec.duration_s,
                          count, offset, spec.intra_op, spec.per_stream, spec.model))
            offset += slot * 7  # a prime stride through the image list
        limit = (spec.duration_s or 0.0) + RESULT_GRACE_S
        results: list[WorkerResult] = []
        for conn in self._conns[:workers]:
            if not conn.poll(limit):
                raise LoadGeneratorError(f"a worker did not answer within {limit:.0f} s")
            answer = conn.recv()
            assert isinstance(answer, WorkerResult)
            results.append(answer)
        return _merge(spec, workers, results)

    def close(self) -> None:
        for conn in self._conns:
            try:
                conn.send(None)
            except OSError:
                pass
        for process in self._processes:
            process.join(timeout=5)
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)


def _merge(spec: RunSpec, workers: int, results: list[WorkerResult]) -> Run:
    completed = sum(result.completed for result in results)
    errors = sum(result.errors for result in results)
    first_error = next((result.first_error for result in results if result.first_error), "")
    if completed == 0:
        raise LoadGeneratorError(f"{spec.kind} x{spec.concurrency}: no call succeeded "
                                 f"({errors} errors; first: {first_error})")
    wall = max(r.finished for r in results) - min(r.started for r in results)
    if spec.duration_s is not None:
        throughput = sum(r.completed / spec.duration_s for r in results)
    else:
        throughput = completed / wall if wall > 0 else math.nan
    latencies = sorted(1000.0 * value for r in results for value in r.latencies_s)
    return Run(spec, workers, completed, errors, wall, throughput,
               percentile(latencies, 50), percentile(latencies, 95), percentile(latencies, 99),
               first_error, latencies)
