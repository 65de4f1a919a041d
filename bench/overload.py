"""Overload and hostile-load scenarios against a real Triton and the server as its own process
(default settings). Not a timed test: it measures and writes a report.

    .venv/bin/python -m bench.overload [--seconds 30] [--out bench/report]

Phases, one after another on the same processes:
1. overload: `--heavy` (512) Detect calls kept in flight with 5 s deadlines from one channel,
   and a light caller with one call in flight on a channel of its own. Reports success rate,
   codes, latency of the refusals, the light caller's success and p50/p99.
2. scan bombs: the light caller again, while another channel sends 6000x6000 progressive JPEGs
   with 10 000 scans (server refuses them) and the same bombs go straight to Triton (its decode
   step refuses them); server and Triton CPU seconds spent on them.
3. uploads: 100 streams each uploading a 10 MB image at once; the server's peak RSS against
   the upload budget (limits.max_upload_buffer_bytes), and RSS after.
4. storm: callers that ignore RetryInfo (bench/storm.py), against servers of their own, each
   `--storm-arm` side by side.
RSS of the server and PSS of Triton with its Python-backend stubs (PSS: the shared-memory
regions they share are counted once) are sampled every 0.5 s; written
to <out>/overload.json, overload.png and overload.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import struct
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psutil
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from tritonclient.grpc import InferInput
from tritonclient.grpc.aio import InferenceServerClient
from tritonclient.utils import InferenceServerException

from bench import storm
from bench.payloads import ROOT, small_jpeg
from bench.procs import ServerProcess, launch_triton
from bench.stats import percentile
from server.settings import LimitsSettings
from tests.images import scan_bomb
from vision.v1 import detection_service_pb2 as det_pb2
from vision.v1 import detection_service_pb2_grpc as det_grpc
from vision.v1 import image_pb2, upload_pb2

DEADLINE_S = 5.0
# Each caller its own connection, as separate clients have: channels of one process otherwise
# share a subchannel (one connection, one peer for the server's fair share).
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]
SAMPLE_EVERY_S = 0.5
UPLOAD_CONNECTIONS = 4
# The heavy callers start within the first second, as a fleet of clients would, rather than in
# one instant from one process (whose own 512 call set-ups would then be measured).
RAMP_S = 1.0
INITIAL_BACKOFF_S = 0.2
MAX_BACKOFF_S = 10.0


@dataclass
class Calls:
    """Outcomes of one caller: code name → count, and latencies (seconds) by code."""

    codes: Counter[str] = field(default_factory=Counter)
    latencies: dict[str, list[float]] = field(default_factory=dict)

    def add(self, code: str, seconds: float) -> None:
        self.codes[code] += 1
        self.latencies.setdefault(code, []).append(seconds)

    def summary(self) -> dict[str, Any]:
        total = sum(self.codes.values())
        ok = self.latencies.get("OK", [])
        refused = self.latencies.get("RESOURCE_EXHAUSTED", [])
        return {
            "calls": total,
            "codes": dict(self.codes),
            "success_rate": round(self.codes["OK"] / total, 4) if total else None,
            "ok_p50_ms": round(1000 * percentile(ok, 50), 1) if ok else None,
            "ok_p99_ms": round(1000 * percentile(ok, 99), 1) if ok else None,
            "refused_p50_ms": round(1000 * percentile(refused, 50), 1) if refused else None,
            "refused_p99_ms": round(1000 * percentile(refused, 99), 1) if refused else None,
        }


class Sampler:
    """RSS of the server and PSS of Triton with its stubs, over time."""

    def __init__(self, server_pid: int, triton_pid: int) -> None:
        self.server = psutil.Process(server_pid)
        self.triton = psutil.Process(triton_pid)
        self.start = time.monotonic()
        self.rows: list[tuple[float, float, float, str]] = []
        self.phase = "idle"

    def triton_rss(self) -> int:
        """Triton's and its stubs' memory as PSS: their shared-memory regions are mapped by
        both Triton and a stub, and summing RSS would count those pages twice."""
        total = 0
        for process in [self.triton, *self.triton.children(recursive=True)]:
            try:
                total += int(process.memory_full_info().pss)
            except psutil.NoSuchProcess:
                continue
        return total

    def sample(self) -> tuple[float, float]:
        server = round(self.server.memory_info().rss / 2**20, 1)
        triton = round(self.triton_rss() / 2**20, 1)
        self.rows.append((round(time.monotonic() - self.start, 2), round(server, 1),
                          round(triton, 1), self.phase))
        return server, triton

    async def run(self) -> None:
        """Samples in a thread: reading twenty processes' PSS takes ~45 ms (the kernel walks
        their page tables), which on this loop stalled the load generator's calls and added
        ~90 ms to the refusals' p99 as the client saw it."""
        while True:
            await asyncio.to_thread(self.sample)
            await asyncio.sleep(SAMPLE_EVERY_S)

    def peak(self, phase: str, column: int) -> float:
        """Largest sample of a phase: column 1 the server's RSS, 2 Triton's."""
        return max(float(row[column]) for row in self.rows if row[3] == phase)


def retry_delay_s(error: grpc.aio.AioRpcError) -> float:
    """The RetryInfo delay the server sent with a refusal (0 without one)."""
    status = rpc_status.from_call(error)
    for detail in status.details if status is not None else []:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return float(info.retry_delay.ToTimedelta().total_seconds())
    return 0.0


def backoff_s(error: grpc.aio.AioRpcError, refusals: int, rng: random.Random) -> float:
    """What a polite client waits after its `refusals`-th refusal in a row: the SDK's policy
    (clients/python/vision_client/retry.py), exponential backoff with full jitter from 0.2 s up
    to 10 s, never sooner than the server's RetryInfo."""
    ceiling = min(MAX_BACKOFF_S, INITIAL_BACKOFF_S * 2 ** (refusals - 1))
    return max(rng.uniform(0, ceiling), retry_delay_s(error))


async def detect_loop(stub: det_grpc.DetectionServiceAsyncStub,
                      request: det_pb2.DetectObjectsRequest, calls: Calls, until: float,
                      rng: random.Random, ramp_s: float = 0.0) -> None:
    """One caller with one call in flight until `until`, starting within the first `ramp_s`;
    after a refusal (RESOURCE_EXHAUSTED or UNAVAILABLE) it backs off as a real client would.
    A flood that does not would measure mostly how fast the load generator spins, on the same
    2 cores as the server."""
    await asyncio.sleep(rng.uniform(0, ramp_s))
    refusals = 0
    while (now := time.monotonic()) < until:
        try:
            await stub.DetectObjects(request, timeout=DEADLINE_S)
            calls.add("OK", time.monotonic() - now)
            refusals = 0
        except grpc.aio.AioRpcError as error:
            calls.add(error.code().name, time.monotonic() - now)
            if error.code() in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE):
                refusals += 1
                pause = backoff_s(error, refusals, rng)
                await asyncio.sleep(min(pause, max(0.0, until - time.monotonic())))


def logged_refusals_ms(log_path: Path, skip_lines: int) -> list[float]:
    """Durations the server's access log gives its RESOURCE_EXHAUSTED answers after the first
    skip_lines lines: the refusal as the server sees it, without the client's own delays."""
    lines = log_path.read_text(errors="replace").splitlines()[skip_lines:]
    return [float(line.rsplit("duration_ms=", 1)[1].split()[0]) for line in lines
            if " RESOURCE_EXHAUSTED " in line and "duration_ms=" in line]


def log_lines(log_path: Path) -> int:
    return len(log_path.read_text(errors="replace").splitlines())


async def overload(address: str, heavy: int, seconds: float) -> dict[str, Any]:
    request = det_pb2.DetectObjectsRequest(image=image_pb2.Image(content=small_jpeg()))
    heavy_calls, light_calls = Calls(), Calls()
    until = time.monotonic() + seconds
    async with grpc.aio.insecure_channel(address, options=OWN_CONNECTION) as heavy_channel, \
            grpc.aio.insecure_channel(address, options=OWN_CONNECTION) as light_channel:
        heavy_stub: det_grpc.DetectionServiceAsyncStub = det_grpc.DetectionServiceStub(
            heavy_channel)
        light_stub: det_grpc.DetectionServiceAsyncStub = det_grpc.DetectionServiceStub(
            light_channel)
        rng = random.Random(1)
        await asyncio.gather(
            *(detect_loop(heavy_stub, request, heavy_calls, until, rng, RAMP_S)
              for _ in range(heavy)),
            detect_loop(light_stub, request, light_calls, until, rng))
    return {"heavy": heavy_calls.summary(), "light": light_calls.summary()}


def _bomb_inputs(content: bytes) -> list[InferInput]:
    image = InferInput("IMAGE", [1, 1], "BYTES")
    image.set_data_from_numpy(np.array([[content]], dtype=np.object_))
    score = InferInput("SCORE_THRESHOLD", [1, 1], "FP32")
    score.set_data_from_numpy(np.array([[0.25]], dtype=np.float32))
    iou = InferInput("IOU_THRESHOLD", [1, 1], "FP32")
    iou.set_data_from_numpy(np.array([[0.45]], dtype=np.float32))
    return [image, score, iou]


async def bombs(address: str, triton_url: str, server_pid: int, triton_pid: int,
                count: int) -> dict[str, Any]:
    bomb = scan_bomb()
    request = det_pb2.DetectObjectsRequest(image=image_pb2.Image(content=bomb))
    good = det_pb2.DetectObjectsRequest(image=image_pb2.Image(content=small_jpeg()))
    light = Calls()
    server_codes: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    processes = [psutil.Process(server_pid), psutil.Process(triton_pid),
                 *psutil.Process(triton_pid).children(recursive=True)]
    cpu_before = [sum(p.cpu_times()[:2]) for p in processes]
    async with grpc.aio.insecure_channel(address, options=OWN_CONNECTION) as channel, \
            grpc.aio.insecure_channel(address, options=OWN_CONNECTION) as light_channel:
        stub: det_grpc.DetectionServiceAsyncStub = det_grpc.DetectionServiceStub(channel)
        light_stub: det_grpc.DetectionServiceAsyncStub = det_grpc.DetectionServiceStub(
            light_channel)
        client = InferenceServerClient(triton_url)

        async def via_server() -> None:
            try:
                await stub.DetectObjects(request, timeout=30)
                server_codes["OK"] += 1
            except grpc.aio.AioRpcError as error:
                server_codes[error.code().name] += 1

        async def via_triton() -> None:
            try:
                result = await client.infer("yolox_nano", _bomb_inputs(bomb), client_timeout=60)
                statuses[int(result.as_numpy("IMAGE_STATUS").reshape(-1)[0])] += 1
            except InferenceServerException:
                statuses[-1] += 1

        try:
            # First the bombs alone, for the CPU they cost; then again beside the light caller.
            await asyncio.gather(*(via_server() for _ in range(count)),
                                 *(via_triton() for _ in range(count)))
            cpu_after = [sum(p.cpu_times()[:2]) for p in processes]
            until = time.monotonic() + 10.0
            await asyncio.gather(
                *(via_server() for _ in range(count)), *(via_triton() for _ in range(count)),
                detect_loop(light_stub, good, light, until, random.Random(2)))
        finally:
            await client.close()
    return {
        "bombs": count, "bomb_bytes": len(bomb), "server_codes": dict(server_codes),
        "triton_image_status": {str(k): v for k, v in statuses.items()},
        "server_cpu_s": round(cpu_after[0] - cpu_before[0], 2),
        "triton_cpu_s": round(sum(cpu_after[1:]) - sum(cpu_before[1:]), 2),
        "light": light.summary(),
    }


def large_png_bytes(size: int) -> bytes:
    """A real PNG of about `size` bytes: square RGB noise stored without compression, so it
    is as large as its pixels and decodes in milliseconds (a memcpy, not an inflate): the
    upload scenario measures the server's buffering, not Triton's decoding."""
    side = max(1, int((size / 3) ** 0.5))
    pixels = np.random.default_rng(1).integers(0, 256, (side, side * 3), dtype=np.uint8)
    rows = np.hstack([np.zeros((side, 1), dtype=np.uint8), pixels])  # filter byte 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    data = zlib.compress(rows.tobytes(), 0)
    idat = b"".join(chunk(b"IDAT", data[i:i + (1 << 16)]) for i in range(0, len(data), 1 << 16))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + idat + chunk(b"IEND", b"")


async def uploads(address: str, streams: int, size: int) -> dict[str, Any]:
    content = large_png_bytes(size)
    codes: Counter[str] = Counter()

    async def one(index: int, stub: det_grpc.DetectionServiceAsyncStub) -> None:
        async def messages() -> AsyncIterator[det_pb2.StreamDetectObjectsRequest]:
            yield det_pb2.StreamDetectObjectsRequest(header=upload_pb2.UploadHeader(
                request_id=f"u{index}", size_bytes=len(content)))
            for start in range(0, len(content), 1 << 20):
                yield det_pb2.StreamDetectObjectsRequest(
                    chunk=upload_pb2.ImageChunk(data=content[start:start + (1 << 20)]))
            yield det_pb2.StreamDetectObjectsRequest(end=upload_pb2.UploadEnd())

        try:
            async for response in stub.StreamDetectObjects(messages(), timeout=300):
                codes[f"item:{response.status.code}"] += 1
        except grpc.aio.AioRpcError as error:
            codes[error.code().name] += 1

    # Several connections, as many clients would have: one connection may hold only
    # admission.peer_share of the server's streams (96 of 128), and the Python asyncio client
    # reports a stream refused while it is still writing as INTERNAL (grpc/grpc#36066).
    channels = [grpc.aio.insecure_channel(address, options=OWN_CONNECTION)
                for _ in range(UPLOAD_CONNECTIONS)]
    stubs: list[det_grpc.DetectionServiceAsyncStub] = [
        det_grpc.DetectionServiceStub(channel) for channel in channels]
    start = time.monotonic()
    try:
        await asyncio.gather(*(one(i, stubs[i % len(stubs)]) for i in range(streams)))
    finally:
        for channel in channels:
            await channel.close()
    return {"streams": streams, "bytes_each": len(content), "codes": dict(codes),
            "connections": UPLOAD_CONNECTIONS, "seconds": round(time.monotonic() - start, 1)}


def plot(rows: list[tuple[float, float, float, str]], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    ax.plot([r[0] for r in rows], [r[1] for r in rows], label="server RSS")
    ax.plot([r[0] for r in rows], [r[2] for r in rows], label="Triton + stubs PSS")
    phase_starts: dict[str, float] = {}
    for t, _, _, phase in rows:
        phase_starts.setdefault(phase, t)
    for phase, t in phase_starts.items():
        ax.axvline(t, color="grey", linestyle=":")
        ax.text(t, ax.get_ylim()[1] * 0.95, phase, fontsize=8)
    ax.set_xlabel("seconds")
    ax.set_ylabel("MiB")
    ax.legend(loc="center right")
    fig.tight_layout()
    path = out / "overload.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


async def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    triton = launch_triton(work / "triton.log")
    server = ServerProcess(triton.grpc_url, work / "server.log")
    try:
        server.wait_serving()
        sampler = Sampler(server.pid, triton.pid)
        sampling = asyncio.create_task(sampler.run())
        async with grpc.aio.insecure_channel(server.address) as channel:  # warm the models
            request = det_pb2.DetectObjectsRequest(image=image_pb2.Image(content=small_jpeg()))
            warm: det_grpc.DetectionServiceAsyncStub = det_grpc.DetectionServiceStub(channel)
            for _ in range(5):
                await warm.DetectObjects(request, timeout=30)
        await asyncio.sleep(2)
        idle_server, idle_triton = sampler.sample()
        results: dict[str, Any] = {}
        memory: dict[str, Any] = {"idle": {"server": idle_server, "triton": idle_triton}}
        if "overload" in args.phases:
            sampler.phase = "overload"
            skip = log_lines(server.log_path)
            results["overload"] = await overload(server.address, args.heavy, args.seconds)
            logged = logged_refusals_ms(server.log_path, skip)
            results["overload"]["server_refusals"] = {
                "count": len(logged),
                "p50_ms": round(percentile(logged, 50), 2) if logged else None,
                "p99_ms": round(percentile(logged, 99), 2) if logged else None}
            sampler.phase = "after overload"
            await asyncio.sleep(10)
            after_server, after_triton = sampler.sample()
            memory["overload_peak"] = {"server": sampler.peak("overload", 1),
                                       "triton": sampler.peak("overload", 2)}
            memory["after_overload"] = {"server": after_server, "triton": after_triton}
        if "bombs" in args.phases:
            sampler.phase = "scan bombs"
            results["scan_bombs"] = await bombs(server.address, triton.grpc_url, server.pid,
                                                triton.pid, args.bombs)
        if "uploads" in args.phases:
            sampler.phase = "uploads"
            results["uploads"] = await uploads(server.address, args.streams, args.upload_bytes)
            budget_mib = LimitsSettings().max_upload_buffer_bytes / 2**20
            upload_peak = sampler.peak("uploads", 1)
            memory["uploads_peak_server"] = upload_peak
            memory["upload_budget"] = budget_mib
            memory["uploads_peak_over_budget"] = round((upload_peak - idle_server) / budget_mib, 2)
        sampler.phase = "end"
        await asyncio.sleep(5)
        end_server, end_triton = sampler.sample()
        sampling.cancel()
        memory["end"] = {"server": end_server, "triton": end_triton}
        results["memory_mib"] = memory
        results["rss_samples"] = sampler.rows
        return results
    finally:
        server.stop()
        triton.stop()


def markdown(results: dict[str, Any], command: str) -> str:
    mem = results["memory_mib"]
    lines = [
        "# Overload, scan bombs, uploads and retry storms", "",
        f"Command: `{command}` — one run on this 2-core machine (shared with other work), "
        "server with default settings, real CPU Triton.", "",
        "| scenario | figure |", "|---|---|",
    ]
    if "overload" in results:
        heavy, light = results["overload"]["heavy"], results["overload"]["light"]
        lines += [
            f"| heavy caller, {results['heavy']} in flight, 5 s deadlines, backing off after "
            f"refusals | {heavy['calls']} "
            f"calls, codes {heavy['codes']}, refusals p50/p99 {heavy['refused_p50_ms']}/"
            f"{heavy['refused_p99_ms']} ms, OK p50/p99 {heavy['ok_p50_ms']}/"
            f"{heavy['ok_p99_ms']} ms |",
            f"| the same refusals in the server's access log | "
            f"{results['overload']['server_refusals']['count']} refusals, p50/p99 "
            f"{results['overload']['server_refusals']['p50_ms']}/"
            f"{results['overload']['server_refusals']['p99_ms']} ms |",
            f"| light caller, 1 in flight, meanwhile | success {light['success_rate']}, "
            f"codes {light['codes']}, p50/p99 {light['ok_p50_ms']}/{light['ok_p99_ms']} ms |",
            f"| RSS server idle / overload peak / 10 s after | {mem['idle']['server']} / "
            f"{mem['overload_peak']['server']} / {mem['after_overload']['server']} MiB |",
            f"| PSS Triton + stubs idle / overload peak / 10 s after | {mem['idle']['triton']} / "
            f"{mem['overload_peak']['triton']} / {mem['after_overload']['triton']} MiB |",
        ]
    if "scan_bombs" in results:
        bomb = results["scan_bombs"]
        lines += [
            f"| {bomb['bombs']} scan bombs ({bomb['bomb_bytes']} B) via the server | "
            f"{bomb['server_codes']}, server CPU {bomb['server_cpu_s']} s |",
            f"| the same bombs straight to Triton | IMAGE_STATUS "
            f"{bomb['triton_image_status']}, Triton CPU {bomb['triton_cpu_s']} s |",
            f"| light caller during as many bombs again | success "
            f"{bomb['light']['success_rate']}, p50/p99 {bomb['light']['ok_p50_ms']}/"
            f"{bomb['light']['ok_p99_ms']} ms |",
        ]
    if "uploads" in results:
        up = results["uploads"]
        lines.append(
            f"| {up['streams']} streams x {up['bytes_each'] / 1e6:.0f} MB uploads | "
            f"{up['codes']} in {up['seconds']} s; server peak {mem['uploads_peak_server']} MiB "
            f"(idle {mem['idle']['server']}; budget {mem['upload_budget']:.0f} MiB → "
            f"{mem['uploads_peak_over_budget']} x budget above idle) |")
    lines += [f"| RSS server / PSS Triton at the end | {mem['end']['server']} / "
              f"{mem['end']['triton']} MiB |", "", "![RSS over time](overload.png)", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.overload", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--heavy", type=int, default=512)
    parser.add_argument("--bombs", type=int, default=10)
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--upload-bytes", type=int, default=10_000_000)
    parser.add_argument("--phases", nargs="+", default=["overload", "bombs", "uploads", "storm"],
                        choices=["overload", "bombs", "uploads", "storm"])
    parser.add_argument("--storm-arm", type=storm.Arm.parse, action="append", dest="arm",
                        help="storm phase: NAME=CHECKOUT[:SERVER FLAGS], e.g. the code before a "
                        "change beside this checkout (bench/storm.py); default: this checkout")
    parser.add_argument("--storm-repeats", type=int, default=2, dest="repeats")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "report")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        results = asyncio.run(run(args, Path(work)))
        if "storm" in args.phases:
            storm_args = argparse.Namespace(seconds=storm.SECONDS, callers=storm.CALLERS,
                                            connections=storm.CONNECTIONS, arm=args.arm,
                                            repeats=args.repeats)
            results["storm"] = storm.run(storm_args, Path(work))
    results["heavy"] = args.heavy
    command = "python -m bench.overload " + " ".join(sys.argv[1:])
    (args.out / "overload.json").write_text(json.dumps(results, indent=1) + "\n")
    plot(results["rss_samples"], args.out)
    report = markdown(results, command)
    if "storm" in results:
        report += "\n" + storm.markdown(results["storm"], command, storm.SECONDS, storm.CALLERS,
                                        storm.CONNECTIONS)
    (args.out / "overload.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
