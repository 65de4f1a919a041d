"""One server process against two (`--workers 2`), with the nearly free `header_detector` model
(tests/model_repository) so that the gateway's own cost is what is measured. Not a timed test:
it measures and writes a report.

    .venv/bin/python -m bench.workers [--seconds 10] [--rounds 3] [--out bench/report]

One Triton (model_repository + tests/model_repository) and both servers run side by side, each
its own process tree; rounds interleave the arms (1 then 2 workers, at 16 then 64 unary
DetectObjects in flight). The load comes from two spawned generator processes, each with half the
calls in flight spread over 8 connections of its own: the kernel gives each connection to one
worker (SO_REUSEPORT), so one connection would measure one worker. Per run: throughput, p50,
errors, CPU ms per call of the server (supervisor and workers), of Triton (with its backend
stubs) and of the generator, each worker's share of the server's CPU, and the cores busy in
all. Admission is opened wide in both arms (it is per process and not what is measured here).
Written to <out>/workers.json.

Each server's workers share one embedded store directory of its own (DetectObjects never
touches it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc
import psutil

from bench.payloads import ROOT, small_jpeg
from bench.procs import ProcessGroup, ServerProcess, free_port
from bench.stats import paired_ratio, percentile, spread
from tools.local_triton import start_triton
from vision.v1 import detection_service_pb2 as det_pb2
from vision.v1 import detection_service_pb2_grpc as det_grpc
from vision.v1 import image_pb2

MODEL = "header_detector"
GENERATORS = 2
CONNECTIONS_PER_GENERATOR = 8
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]
START_MARGIN_S = 1.0
CALL_TIMEOUT_S = 60.0
READY_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Load:
    address: str
    in_flight: int
    seconds: float
    start_at: float  # time.monotonic() instant shared by the generators


@dataclass
class Outcome:
    completed: int
    errors: int
    latencies_s: list[float]
    cpu_s: float = 0.0  # the generator process's own, over its share of the run
    first_error: str = ""


def generate(load: Load) -> Outcome:
    """One generator process's share: `in_flight` closed loops over its own connections."""
    return asyncio.run(_generate(load))


async def _generate(load: Load) -> Outcome:
    channels = [grpc.aio.insecure_channel(load.address, options=OWN_CONNECTION)
                for _ in range(CONNECTIONS_PER_GENERATOR)]
    await asyncio.gather(*(channel.channel_ready() for channel in channels))
    stubs = [det_grpc.DetectionServiceStub(channel) for channel in channels]
    request = det_pb2.DetectObjectsRequest(image=image_pb2.Image(content=small_jpeg()))
    outcome = Outcome(0, 0, [])
    await asyncio.sleep(max(0.0, load.start_at - time.monotonic()))
    cpu_began = time.process_time()
    end = time.monotonic() + load.seconds

    async def loop(slot: int) -> None:
        stub = stubs[slot % len(stubs)]
        while time.monotonic() < end:
            began = time.perf_counter()
            try:
                await stub.DetectObjects(request, timeout=CALL_TIMEOUT_S)
            except grpc.aio.AioRpcError as err:
                outcome.errors += 1
                outcome.first_error = outcome.first_error or f"{err.code().name}: {err.details()}"
                await asyncio.sleep(0.01)
                continue
            if time.monotonic() < end:  # calls that finish after the window are not counted
                outcome.completed += 1
                outcome.latencies_s.append(time.perf_counter() - began)

    await asyncio.gather(*(loop(slot) for slot in range(load.in_flight)))
    outcome.cpu_s = time.process_time() - cpu_began
    await asyncio.gather(*(channel.close() for channel in channels))
    return outcome


def wait_workers_ready(server: ServerProcess, workers: int) -> None:
    """Until every worker listens on the port (each must before the load starts; their
    readiness lines are INFO logs, and logging every call would tax this arm)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        listening = 0
        for pid in worker_pids(server):
            try:
                listening += any(c.status == psutil.CONN_LISTEN and c.laddr.port == server.port
                                 for c in psutil.Process(pid).net_connections("tcp"))
            except psutil.NoSuchProcess:
                continue
        if listening == workers:
            return
        if time.monotonic() > deadline or server.process.poll() is not None:
            raise RuntimeError(f"workers not listening; see {server.log_path}")
        time.sleep(0.2)


def worker_pids(server: ServerProcess) -> list[int]:
    return [child.pid for child in psutil.Process(server.pid).children()]


def run_arm(pool: ProcessPoolExecutor, server: ServerProcess, triton: ProcessGroup,
            in_flight: int, seconds: float) -> dict[str, Any]:
    workers = worker_pids(server) or [server.pid]
    groups = {"server": ProcessGroup([server.pid], with_children=True), "triton": triton}
    per_worker = {pid: ProcessGroup([pid]) for pid in workers}
    before = {name: group.usage().cpu_s for name, group in groups.items()}
    before_worker = {pid: group.usage().cpu_s for pid, group in per_worker.items()}
    load = Load(server.address, in_flight // GENERATORS, seconds,
                time.monotonic() + START_MARGIN_S)
    began = time.monotonic()
    outcomes = list(pool.map(generate, [load] * GENERATORS))
    elapsed = time.monotonic() - began
    spent = {name: group.usage().cpu_s - before[name] for name, group in groups.items()}
    spent["generator"] = sum(o.cpu_s for o in outcomes)
    spent_worker = [per_worker[pid].usage().cpu_s - before_worker[pid] for pid in workers]
    completed = sum(o.completed for o in outcomes)
    latencies = [value for o in outcomes for value in o.latencies_s]
    total_worker = sum(spent_worker) or 1.0
    return {
        "in_flight": in_flight,
        "completed": completed,
        "errors": sum(o.errors for o in outcomes),
        "first_error": next((o.first_error for o in outcomes if o.first_error), ""),
        "throughput": completed / seconds,
        "p50_ms": 1000 * percentile(latencies, 50),
        "p99_ms": 1000 * percentile(latencies, 99),
        "cpu_ms_per_call": {name: 1000 * cpu / max(completed, 1) for name, cpu in spent.items()},
        "worker_cpu_share": [round(cpu / total_worker, 3) for cpu in spent_worker],
        "cores_busy": sum(spent.values()) / elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.workers", description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0, help="per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "report")
    args = parser.parse_args()
    var = ROOT / "var"
    var.mkdir(exist_ok=True)

    triton = start_triton(grpc_port=free_port(), http_port=free_port(),
                          metrics_port=free_port(), log_path=var / "bench-workers-triton.log",
                          extra_repositories=[ROOT / "tests" / "model_repository"])
    stores = Path(tempfile.mkdtemp(prefix="bench-workers-stores-", dir=var))
    common = ["--detection.default-model", MODEL,
              "--admission.max-in-flight", "256", "--admission.max-waiting", "256",
              "--admission.peer-share", "1.0", "--log-level", "WARNING"]
    servers: dict[int, ServerProcess] = {}
    pool = ProcessPoolExecutor(GENERATORS, mp_context=multiprocessing.get_context("spawn"))
    try:
        for workers in (1, 2):
            servers[workers] = ServerProcess(
                triton.grpc_url, var / f"bench-workers-{workers}.log",
                [*common, "--store.path", str(stores / str(workers)), "--workers", str(workers)])
        for workers, server in servers.items():
            server.wait_serving()
            if workers > 1:
                wait_workers_ready(server, workers)
        triton_group = ProcessGroup([triton.pid], with_children=True)
        # Warm-up: the first calls of each process and each connection stay out of the figures.
        for server in servers.values():
            run_arm(pool, server, triton_group, 16, 3.0)
        runs: list[dict[str, Any]] = []
        for round_ in range(1, args.rounds + 1):
            for in_flight in (16, 64):
                for workers, server in servers.items():
                    run = run_arm(pool, server, triton_group, in_flight, args.seconds)
                    run.update(round=round_, workers=workers)
                    runs.append(run)
                    print(f"round {round_} x{in_flight} workers={workers}: "
                          f"{run['throughput']:.0f}/s p50 {run['p50_ms']:.1f} ms, server "
                          f"{run['cpu_ms_per_call']['server']:.2f} ms CPU/call, triton "
                          f"{run['cpu_ms_per_call']['triton']:.2f}, generator "
                          f"{run['cpu_ms_per_call']['generator']:.2f}, worker share "
                          f"{run['worker_cpu_share']}, {run['cores_busy']:.2f} cores busy, "
                          f"{run['errors']} errors", flush=True)
    finally:
        pool.shutdown()
        for server in servers.values():
            server.stop()
        triton.stop()
        shutil.rmtree(stores, ignore_errors=True)

    summary: dict[str, Any] = {}
    for in_flight in (16, 64):
        def figures(workers: int, key: str, flight: int = in_flight) -> list[float]:
            return [float(r[key] if key != "server_cpu" else r["cpu_ms_per_call"]["server"])
                    for r in runs if r["in_flight"] == flight and r["workers"] == workers]

        ratio = paired_ratio(figures(2, "throughput"), figures(1, "throughput"))
        summary[f"x{in_flight}"] = {
            "throughput_1": asdict(spread(figures(1, "throughput"))),
            "throughput_2": asdict(spread(figures(2, "throughput"))),
            "throughput_2_over_1": asdict(ratio),
            "server_cpu_ms_1": asdict(spread(figures(1, "server_cpu"))),
            "server_cpu_ms_2": asdict(spread(figures(2, "server_cpu"))),
            "p50_ms_1": asdict(spread(figures(1, "p50_ms"))),
            "p50_ms_2": asdict(spread(figures(2, "p50_ms"))),
        }
        print(f"x{in_flight}: throughput {spread(figures(1, 'throughput')).text(0)}/s (1 worker)"
              f" vs {spread(figures(2, 'throughput')).text(0)}/s (2), 2 / 1 = {ratio.text(2)};"
              f" server CPU per call {spread(figures(1, 'server_cpu')).text(2)} ms vs "
              f"{spread(figures(2, 'server_cpu')).text(2)} ms")
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"model": MODEL, "seconds": args.seconds, "rounds": args.rounds,
              "generators": GENERATORS, "connections": GENERATORS * CONNECTIONS_PER_GENERATOR,
              "cpus": os.cpu_count(), "machine": platform.platform(),
              "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "summary": summary, "runs": runs}
    (args.out / "workers.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out / 'workers.json'}")


if __name__ == "__main__":
    main()
