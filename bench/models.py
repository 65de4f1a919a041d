"""`python -m bench.models`: each model through the service next to the same ONNX files run
in-process, and ingest end to end. Starts its own Triton and server on free ports.

Per model (detection, embedding, faces, OCR): images/s and p50 through the service at 1 and 16
calls in flight (one shared channel), the average Triton batch per step in the 16-in-flight run,
and the in-process reference (tests/reference_*.py: onnxruntime with the same pre/post-processing,
one image at a time in one thread) at 1 in flight; service ÷ in-process is the ratio of their
images/s at 1 in flight, measured side by side (the arms alternate, `--rounds` times). Ingest:
images/s of one StreamIngestImages upload of the test photos. Writes bench/report/models.json
and prints a markdown table (bench/MODELS.md keeps the last full run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from bench.payloads import ROOT
from bench.procs import ServerProcess, average_batches, launch_triton, triton_batch_counters
from tests import reference_faces, reference_mobilenet, reference_ocr, reference_yolox
from tests.images import PHOTOS, decode, photo
from vision.v1 import face_pb2
from vision_client import IngestImage, VisionClient

IMAGES = ("astronaut.png", "chelsea.png", "coffee.png", "obama.jpg", "sample1.jpg",
          "synthetic_text.png")
# What Triton executes per task on the CPU configuration (configs/cpu.pbtxt): one step each.
STEPS = {"detection": ("yolox_nano",), "embedding": ("mobilenet_v2",),
         "faces": ("yunet_mobilefacenet",), "ocr": ("ppocr_v6",)}
REPORT = ROOT / "bench" / "report" / "models.json"

Call = Callable[[VisionClient, bytes], Awaitable[Any]]
CALLS: dict[str, Call] = {
    "detection": lambda client, image: client.detect(image),
    "embedding": lambda client, image: client.embed(image),
    "faces": lambda client, image: client.detect_faces(
        image, face_pb2.FaceOptions(include_embeddings=True)),
    "ocr": lambda client, image: client.extract_text(image),
}
IN_PROCESS: dict[str, Callable[[str], Any]] = {
    "detection": lambda name: reference_yolox.detect(decode(name)),
    "embedding": lambda name: reference_mobilenet.embed(decode(name)),
    "faces": lambda name: reference_faces.faces(decode(name)),
    "ocr": lambda name: reference_ocr.read(PHOTOS / name),
}


async def service_run(client: VisionClient, task: str, in_flight: int, calls: int
                      ) -> dict[str, float]:
    latencies: list[float] = []
    queue = [photo(IMAGES[i % len(IMAGES)]) for i in range(calls)]

    async def worker() -> None:
        while queue:
            image = queue.pop()
            began = time.perf_counter()
            await CALLS[task](client, image)
            latencies.append(time.perf_counter() - began)

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    wall = time.perf_counter() - began
    return {"images_per_s": calls / wall, "p50_ms": statistics.median(latencies) * 1000}


def in_process_run(task: str, calls: int) -> dict[str, float]:
    latencies = []
    began = time.perf_counter()
    for i in range(calls):
        start = time.perf_counter()
        IN_PROCESS[task](IMAGES[i % len(IMAGES)])
        latencies.append(time.perf_counter() - start)
    wall = time.perf_counter() - began
    return {"images_per_s": calls / wall, "p50_ms": statistics.median(latencies) * 1000}


def median_of(runs: list[dict[str, float]], key: str) -> float:
    return round(statistics.median(run[key] for run in runs), 2)


async def measure(address: str, triton_url: str, calls: int, rounds: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    async with VisionClient(address, timeout_s=300) as client:
        for task in CALLS:
            for name in IMAGES:  # warm every path once
                await CALLS[task](client, photo(name))
                IN_PROCESS[task](name)
            one, sixteen, local, batches = [], [], [], []
            for _ in range(rounds):
                one.append(await service_run(client, task, 1, calls))
                local.append(in_process_run(task, calls))
                before = triton_batch_counters(triton_url)
                sixteen.append(await service_run(client, task, 16, calls * 2))
                batches.append(average_batches(before, triton_batch_counters(triton_url)))
            results[task] = {
                "service_1": {"images_per_s": median_of(one, "images_per_s"),
                              "p50_ms": median_of(one, "p50_ms")},
                "service_16": {"images_per_s": median_of(sixteen, "images_per_s"),
                               "p50_ms": median_of(sixteen, "p50_ms")},
                "in_process_1": {"images_per_s": median_of(local, "images_per_s"),
                                 "p50_ms": median_of(local, "p50_ms")},
                "service_over_in_process": round(
                    statistics.median(s["images_per_s"] / p["images_per_s"]
                                      for s, p in zip(one, local, strict=True)), 3),
                "average_batch_at_16": {step: round(statistics.median(
                    b.get(step, 0.0) for b in batches), 2) for step in STEPS[task]},
            }
            print(task, json.dumps(results[task]), flush=True)
        ingest = [IngestImage(f"{name}-{i}", photo(name)) for i in range(3)
                  for name in sorted(p.name for p in PHOTOS.iterdir())]
        began = time.perf_counter()
        done = [r async for r in client.stream_ingest(ingest)]
        wall = time.perf_counter() - began
        assert all(r.status.code == 0 for r in done)
        results["ingest"] = {"images": len(ingest), "images_per_s": round(len(ingest) / wall, 2)}
        print("ingest", json.dumps(results["ingest"]), flush=True)
    return results


def markdown(results: dict[str, Any]) -> str:
    lines = ["| model | service 1 in flight: img/s, p50 | service 16: img/s, p50 | "
             "in-process 1: img/s, p50 | service ÷ in-process | avg Triton batch at 16 |",
             "|---|---|---|---|---|---|"]
    for task in CALLS:
        r = results[task]
        batch = ", ".join(f"{k} {v}" for k, v in r["average_batch_at_16"].items())
        lines.append(
            f"| {task} | {r['service_1']['images_per_s']}, {r['service_1']['p50_ms']} ms | "
            f"{r['service_16']['images_per_s']}, {r['service_16']['p50_ms']} ms | "
            f"{r['in_process_1']['images_per_s']}, {r['in_process_1']['p50_ms']} ms | "
            f"{r['service_over_in_process']} | {batch} |")
    lines.append(f"\nIngest end to end (one upload stream, {results['ingest']['images']} "
                 f"images, all four analyses + store): {results['ingest']['images_per_s']} img/s")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.models", description=__doc__)
    parser.add_argument("--calls", type=int, default=24, help="calls per run and arm")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench-models-", dir=ROOT / "var"))
    triton = launch_triton(scratch / "triton.log")
    server = ServerProcess(triton.grpc_url, scratch / "server.log",
                           extra=["--store.path", str(scratch / "store"),
                                  # above the 16 calls in flight measured: serving, not shedding
                                  "--admission.max-in-flight", "64",
                                  "--admission.peer-share", "1.0"])
    try:
        server.wait_serving()
        results = asyncio.run(measure(server.address, triton.grpc_url, args.calls, args.rounds))
    except grpc.RpcError as err:
        raise SystemExit(f"a call failed: {err}") from err
    finally:
        server.stop()
        triton.stop()
    results["command"] = f".venv/bin/python -m bench.models --calls {args.calls} " \
                         f"--rounds {args.rounds}"
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps(results, indent=1))
    print(markdown(results))


if __name__ == "__main__":
    main()
