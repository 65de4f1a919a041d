"""Server CPU per refused call, alone: every call is refused on its metadata (a minimum deadline
longer than any call's), so neither Triton nor serving costs anything and the server's CPU is
all refusals. The callers (16 loops on one connection) run in a process of their own; arms
(servers from any checkout, with optional flags) run interleaved.

    .venv/bin/python -m bench.refusals --arm before=/path/to/checkout --arm after=. [--calls 3200]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import multiprocessing
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.procs import ProcessGroup, free_port
from bench.storm import Arm, StormServer, request
from vision.v1 import detection_service_pb2_grpc as det_grpc

LOOPS = 16
WARM_CALLS = 160


async def _calls(address: str, calls: int, health: bool) -> dict[str, int]:
    detect = request()
    codes: Counter[str] = Counter()
    async with grpc.aio.insecure_channel(address) as channel:
        detection = det_grpc.DetectionServiceStub(channel)
        checks = health_pb2_grpc.HealthStub(channel)

        async def loop() -> None:
            for _ in range(calls // LOOPS):
                try:
                    if health:
                        await checks.Check(health_pb2.HealthCheckRequest(), timeout=5)
                        codes["OK"] += 1
                    else:
                        await detection.DetectObjects(detect, timeout=5)
                except grpc.aio.AioRpcError as error:
                    codes[error.code().name] += 1

        await asyncio.gather(*(loop() for _ in range(LOOPS)))
    return dict(codes)


def caller_process(address: str, calls: int, health: bool, results: Any) -> None:
    results.put(asyncio.run(_calls(address, calls, health)))


def _run(address: str, calls: int, health: bool) -> dict[str, int]:
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    process = context.Process(target=caller_process, args=(address, calls, health, results))
    process.start()
    codes: dict[str, int] = results.get(timeout=300)
    process.join()
    return codes


def measure(server: StormServer, calls: int) -> dict[str, Any]:
    """Server CPU ms per refused DetectObjects call, and per health check (the floor: a call
    that does nothing)."""
    cpu = ProcessGroup([server.pid])
    _run(server.address, WARM_CALLS, health=False)
    figures: dict[str, Any] = {}
    for kind, health in (("refused", False), ("health", True)):
        before = cpu.usage().cpu_s
        codes = _run(server.address, calls, health)
        figures[f"{kind}_codes"] = codes
        figures[f"{kind}_cpu_ms"] = round(1000 * (cpu.usage().cpu_s - before)
                                          / sum(codes.values()), 3)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.refusals", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arm", type=Arm.parse, action="append", required=True)
    parser.add_argument("--calls", type=int, default=3200)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        for repeat in range(args.repeats):
            for arm in args.arm:
                refusing = Arm(arm.name, arm.root,
                               (*arm.flags, "--admission.min-deadline-s", "100"))
                # No Triton: calls are refused before they would need it.
                server = StormServer(refusing, f"127.0.0.1:{free_port()}",
                                     Path(work) / f"{arm.name}-{repeat}.log")
                try:
                    server.wait_until(functools.partial(_listening, server.address), 60)
                    print(arm.name, measure(server, args.calls), flush=True)
                finally:
                    server.stop()


def _listening(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=1)
        except grpc.FutureTimeoutError:
            return False
    time.sleep(0.5)  # start-up's last steps after the port opens
    return True


if __name__ == "__main__":
    main()
