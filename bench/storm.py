"""Retry storm: callers that ignore RetryInfo and call again at once (grpcurl in a shell loop, a
retry loop with no backoff), against the server as its own process and a real CPU Triton. The
load generator runs in processes of its own; its CPU is reported beside the server's and
Triton's.

    .venv/bin/python -m bench.storm [--arm before=/path/to/other/checkout] [--repeats 2]

Per arm (a server started from a checkout, with optional extra flags), against one Triton:
1. reference: 4 callers with one call in flight each on one connection, for OK calls/s.
2. storm: `--callers` callers over `--connections` connections (one process each), every call
   with a 1 s deadline and sent again as soon as it ends, whatever the answer; meanwhile a light
   caller (one call in flight, its own connection and process) and a probe process calling
   health, reflection and /metrics in turn.
Arms run interleaved, `--repeats` times each, so that the machine's other load falls on all of
them alike; the report gives each figure per arm side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import sys
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import psutil
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from bench.payloads import PHOTOS, ROOT
from bench.procs import HOST, ListeningProcess, ProcessGroup, free_port, launch_triton
from bench.stats import percentile
from vision.v1 import detection_service_pb2 as det_pb2
from vision.v1 import detection_service_pb2_grpc as det_grpc
from vision.v1 import image_pb2

IMAGE = "astronaut.png"  # 512x512 PNG, 792 KB
DEADLINE_S = 1.0
LIGHT_DEADLINE_S = 5.0  # the light caller's, as in the overload phase of bench.overload
SECONDS = 10.0
CALLERS = 256
CONNECTIONS = 4
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]
PROBE_EVERY_S = 0.05
PROBES = ("health", "reflection", "metrics")
SETTLE_S = 2.0


@dataclass(frozen=True)
class Arm:
    """A server to measure: started from `root` (a checkout) with `flags` added."""

    name: str
    root: Path
    flags: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Arm:
        """NAME=PATH[:FLAGS], FLAGS split on spaces."""
        name, _, rest = text.partition("=")
        path, _, flags = rest.partition(":")
        return cls(name, Path(path).resolve(), tuple(flags.split()))


class StormServer(ListeningProcess):
    """`python -m server` from an arm's checkout, with a metrics port of its own."""

    def __init__(self, arm: Arm, triton_url: str, log_path: Path) -> None:
        self.metrics_port = free_port()
        super().__init__(lambda port: [
            sys.executable, "-m", "server", "--host", HOST, "--port", str(port),
            "--triton.url", triton_url, "--triton.health-poll-interval-s", "0.5",
            "--metrics-port", str(self.metrics_port), *arm.flags], log_path, cwd=arm.root)

    def wait_serving(self, timeout: float = 60.0) -> None:
        request = health_pb2.HealthCheckRequest(service="vision.v1.DetectionService")
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)

            def serving() -> bool:
                try:
                    return bool(stub.Check(request, timeout=1.0).status
                                == health_pb2.HealthCheckResponse.SERVING)
                except grpc.RpcError:
                    return False

            self.wait_until(serving, timeout)


def request() -> det_pb2.DetectObjectsRequest:
    content = (PHOTOS / IMAGE).read_bytes()
    return det_pb2.DetectObjectsRequest(image=image_pb2.Image(content=content))


def _cpu_s() -> float:
    times = psutil.Process().cpu_times()
    return float(times.user + times.system)


def _outcome(error: grpc.aio.AioRpcError) -> str:
    """The code's name, with the ErrorInfo reason when the server sent one."""
    status = rpc_status.from_call(error)
    for detail in status.details if status is not None else []:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return f"{error.code().name}:{info.reason}"
    return str(error.code().name)


async def _callers(address: str, callers: int, until: float, deadline_s: float
                   ) -> dict[str, Any]:
    """`callers` loops on one connection, each sending again as soon as its call ends."""
    message = request()
    codes: Counter[str] = Counter()
    refused_s: list[float] = []
    async with grpc.aio.insecure_channel(address, options=OWN_CONNECTION) as channel:
        stub = det_grpc.DetectionServiceStub(channel)

        async def loop() -> None:
            while time.monotonic() < until:
                start = time.monotonic()
                try:
                    await stub.DetectObjects(message, timeout=deadline_s)
                    codes["OK"] += 1
                except grpc.aio.AioRpcError as error:
                    codes[_outcome(error)] += 1
                    if error.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED,
                                        grpc.StatusCode.UNAVAILABLE):
                        refused_s.append(time.monotonic() - start)

        await asyncio.gather(*(loop() for _ in range(callers)))
    return {"codes": dict(codes), "refused_s": refused_s}


def caller_process(address: str, callers: int, start_at: float, seconds: float,
                   deadline_s: float, index: int, results: Any) -> None:
    """A load generator process: waits for `start_at` (time.time), then runs its callers;
    puts (index, its outcome) on results."""
    cpu = _cpu_s()
    time.sleep(max(0.0, start_at - time.time()))
    outcome = asyncio.run(_callers(address, callers, time.monotonic() + seconds, deadline_s))
    outcome["cpu_s"] = _cpu_s() - cpu
    results.put((index, outcome))


async def _probes(address: str, metrics_url: str, until: float) -> dict[str, list[float]]:
    latencies: dict[str, list[float]] = {"health": [], "reflection": [], "metrics": []}
    failures: Counter[str] = Counter()
    async with grpc.aio.insecure_channel(address, options=OWN_CONNECTION) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        list_services = reflection_pb2.ServerReflectionRequest(list_services="")

        async def reflect() -> None:
            async for _ in reflection.ServerReflectionInfo(iter([list_services]), timeout=5):
                pass

        def scrape() -> None:
            with urllib.request.urlopen(metrics_url, timeout=5) as answer:
                answer.read()

        while time.monotonic() < until:
            for kind in latencies:
                start = time.monotonic()
                try:
                    if kind == "health":
                        await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
                    elif kind == "reflection":
                        await reflect()
                    else:
                        await asyncio.to_thread(scrape)
                except (grpc.aio.AioRpcError, OSError):
                    failures[kind] += 1
                latencies[kind].append(time.monotonic() - start)
                await asyncio.sleep(PROBE_EVERY_S)
    latencies.update({f"{kind}_failures": [float(n)] for kind, n in failures.items()})
    return latencies


def probe_process(address: str, metrics_url: str, start_at: float, seconds: float,
                  index: int, results: Any) -> None:
    time.sleep(max(0.0, start_at - time.time()))
    results.put((index, {"probes": asyncio.run(_probes(address, metrics_url,
                                                        time.monotonic() + seconds))}))


def _run_processes(targets: list[tuple[Any, tuple[Any, ...]]]) -> list[dict[str, Any]]:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    processes = [context.Process(target=target, args=(*args, index, results))
                 for index, (target, args) in enumerate(targets)]
    for process in processes:
        process.start()
    outcomes = dict(results.get(timeout=300) for _ in processes)
    for process in processes:
        process.join()
    return [outcomes[index] for index in range(len(processes))]


def _ms(values: list[float], q: float) -> float | None:
    return round(1000 * percentile(values, q), 1) if values else None


def measure(server: StormServer, triton_pid: int, args: argparse.Namespace) -> dict[str, Any]:
    """The reference and the storm against one running server."""
    server_cpu = ProcessGroup([server.pid])
    triton_cpu = ProcessGroup([triton_pid], with_children=True)
    address = server.address

    before = server_cpu.usage().cpu_s, triton_cpu.usage().cpu_s
    start_at = time.time() + SETTLE_S
    [reference] = _run_processes([(caller_process,
                                   (address, 4, start_at, args.seconds, DEADLINE_S))])
    reference_ok = reference["codes"].get("OK", 0)
    reference_server_cpu = server_cpu.usage().cpu_s - before[0]

    time.sleep(1.0)
    before = server_cpu.usage().cpu_s, triton_cpu.usage().cpu_s
    start_at = time.time() + SETTLE_S
    per_connection = [args.callers // args.connections] * args.connections
    metrics_url = f"http://{HOST}:{server.metrics_port}/metrics"
    outcomes = _run_processes(
        [(caller_process, (address, n, start_at, args.seconds, DEADLINE_S))
         for n in per_connection]
        + [(caller_process, (address, 1, start_at, args.seconds, LIGHT_DEADLINE_S)),
           (probe_process, (address, metrics_url, start_at, args.seconds))])
    server_s = server_cpu.usage().cpu_s - before[0]
    triton_s = triton_cpu.usage().cpu_s - before[1]
    probes = next(o["probes"] for o in outcomes if "probes" in o)
    callers = [o for o in outcomes if "probes" not in o]
    light, storm = callers[-1], callers[:-1]
    codes: Counter[str] = Counter()
    refused: list[float] = []
    for outcome in storm:
        codes.update(outcome["codes"])
        refused += outcome["refused_s"]
    ok = codes.get("OK", 0)
    calls = sum(codes.values())
    cpu_per_ok_s = reference_server_cpu / reference_ok if reference_ok else 0.0
    not_ok = calls - ok
    light_calls = sum(light["codes"].values())
    return {
        "reference_ok_per_s": round(reference_ok / args.seconds, 2),
        "reference_server_cpu_ms_per_ok": round(1000 * cpu_per_ok_s, 3),
        "storm_calls": calls,
        "storm_codes": dict(codes),
        "storm_ok_per_s": round(ok / args.seconds, 2),
        "ok_ratio": round(ok / reference_ok, 3) if reference_ok else None,
        "server_cpu_s": round(server_s, 2),
        "triton_cpu_s": round(triton_s, 2),
        "generator_cpu_s": round(sum(o["cpu_s"] for o in callers), 2),
        "server_cpu_ms_per_call": round(1000 * server_s / calls, 3) if calls else None,
        # The server's CPU beyond what the storm's OK calls cost at the reference's rate.
        "server_cpu_ms_per_refused": round(1000 * (server_s - ok * cpu_per_ok_s) / not_ok, 3)
        if not_ok else None,
        "refused_p50_ms": _ms(refused, 50),
        "refused_p99_ms": _ms(refused, 99),
        "light_codes": light["codes"],
        "light_ok_rate": round(light["codes"].get("OK", 0) / light_calls, 3)
        if light_calls else None,
        **{f"{kind}_p99_ms": _ms(probes[kind], 99) for kind in PROBES},
        "probe_failures": {kind: int(probes[f"{kind}_failures"][0]) for kind in PROBES
                           if f"{kind}_failures" in probes},
    }


def run(args: argparse.Namespace, work: Path) -> dict[str, list[dict[str, Any]]]:
    arms: list[Arm] = args.arm or [Arm("current", ROOT)]
    triton = launch_triton(work / "triton.log")
    figures: dict[str, list[dict[str, Any]]] = {arm.name: [] for arm in arms}
    try:
        for repeat in range(args.repeats):
            for arm in arms:
                server = StormServer(arm, triton.grpc_url, work / f"{arm.name}-{repeat}.log")
                try:
                    server.wait_serving()
                    figures[arm.name].append(measure(server, triton.pid, args))
                finally:
                    server.stop()
                print(arm.name, json.dumps(figures[arm.name][-1]), flush=True)
    finally:
        triton.stop()
    return figures


ROWS = [
    ("OK calls/s during the storm / with 4 callers", "storm_ok_per_s", "reference_ok_per_s"),
    ("ratio (goal >= 0.7)", "ok_ratio", None),
    ("server CPU ms per refused call (goal <= 0.2)", "server_cpu_ms_per_refused", None),
    ("server CPU ms per call of the storm", "server_cpu_ms_per_call", None),
    ("server / Triton / generator CPU s", "server_cpu_s", "triton_cpu_s"),
    ("refusals at the client p50 / p99 ms (goal p99 <= 50)", "refused_p50_ms",
     "refused_p99_ms"),
    ("light caller OK rate (goal >= 0.95)", "light_ok_rate", None),
    ("health / reflection / metrics p99 ms (goal <= 50)", "health_p99_ms", "reflection_p99_ms"),
    ("probes failed", "probe_failures", None),
    ("storm codes", "storm_codes", None),
]


def _cell(run: dict[str, Any], key: str, second: str | None) -> str:
    text = str(run[key]) if second is None else f"{run[key]} / {run[second]}"
    if key == "server_cpu_s":
        text += f" / {run['generator_cpu_s']}"
    if key == "health_p99_ms":
        text += f" / {run['metrics_p99_ms']}"
    return text


def markdown(figures: dict[str, list[dict[str, Any]]], command: str, seconds: float,
             callers: int, connections: int) -> str:
    names = list(figures)
    header = " | ".join(f"{name} (run {i + 1})" for name in names
                        for i in range(len(figures[name])))
    lines = [
        "## Retry storm", "",
        f"Command: `{command}`. {callers} callers over {connections} connections, each call "
        f"with a {DEADLINE_S:.0f} s deadline and sent again as soon as it ends, {IMAGE} "
        f"({seconds:.0f} s per run); a light caller on its own connection (one call in "
        f"flight, {LIGHT_DEADLINE_S:.0f} s deadlines) and health, reflection and /metrics "
        "probes meanwhile. Arms interleaved, load generator in processes of its own.", "",
        f"| figure | {header} |", "|---|" + "---|" * header.count(" | ") + "---|",
    ]
    for label, key, second in ROWS:
        cells = " | ".join(_cell(run, key, second) for name in names for run in figures[name])
        lines.append(f"| {label} | {cells} |")
    return "\n".join(lines) + "\n"


def parser() -> argparse.ArgumentParser:
    result = argparse.ArgumentParser(prog="python -m bench.storm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    result.add_argument("--seconds", type=float, default=SECONDS)
    result.add_argument("--callers", type=int, default=CALLERS)
    result.add_argument("--connections", type=int, default=CONNECTIONS)
    result.add_argument("--repeats", type=int, default=2)
    result.add_argument("--arm", type=Arm.parse, action="append",
                        help="NAME=CHECKOUT[:SERVER FLAGS]; default: this checkout as it is")
    result.add_argument("--out", type=Path, default=ROOT / "bench" / "report")
    return result


def main() -> None:
    import tempfile

    args = parser().parse_args()
    with tempfile.TemporaryDirectory() as work:
        figures = run(args, Path(work))
    command = "python -m bench.storm " + " ".join(sys.argv[1:])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "storm.json").write_text(json.dumps(figures, indent=1) + "\n")
    print(markdown(figures, command, args.seconds, args.callers, args.connections))


if __name__ == "__main__":
    main()
