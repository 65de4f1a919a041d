"""Quick OCR figures: Triton's ppocr_v6 against RapidOCR in-process on the same photos, at 1 and 4
concurrent requests (p50 per image, images per second; the two alternate in rounds so that other
load on the machine hits both alike), then where Triton's time went per step, from its own
statistics. Prints tables; not part of `make bench` or the tests.

    .venv/bin/python -m bench.ocr_vs_rapidocr --url 127.0.0.1:4601
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from rapidocr import RapidOCR
from tritonclient.grpc.aio import InferenceServerClient, InferInput

from tests.images import photo

STEPS = ("ppocr_v6", "ppocr_v6_det", "ppocr_v6_cls", "ppocr_v6_rec")
DURATIONS = ("queue", "compute_input", "compute_infer", "compute_output")


async def run_load(
    call: Callable[[bytes], Awaitable[None]], images: Sequence[bytes], total: int, concurrency: int
) -> tuple[list[float], float]:
    """`total` calls cycling through the images, `concurrency` at a time: latencies, wall time."""
    latencies: list[float] = []
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for i in range(total):
        queue.put_nowait(images[i % len(images)])

    async def worker() -> None:
        while not queue.empty():
            image = queue.get_nowait()
            start = time.perf_counter()
            await call(image)
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - start


def report(label: str, latencies: list[float], wall: float) -> None:
    print(
        f"{label:<28} p50 {statistics.median(latencies) * 1000:7.0f} ms   "
        f"{len(latencies) / wall:5.2f} images/s   ({len(latencies)} images)"
    )


async def step_stats(triton: InferenceServerClient) -> dict[str, dict[str, Any]]:
    stats = await triton.get_inference_statistics(as_json=True)
    return {entry["name"]: entry for entry in stats["model_stats"] if entry["name"] in STEPS}


def delta(after: dict[str, Any], before: dict[str, Any], *path: str) -> int:
    """after[path] - before[path] of a statistics entry (Triton's JSON leaves zeros out)."""

    def value(entry: Any) -> int:
        for key in path:
            entry = entry.get(key, {})
        return int(entry or 0)

    return value(after) - value(before)


def step_table(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]) -> None:
    print(f"{'step':<14}{'inferences':>11}{'runs':>6}{'batch':>7}", end="")
    print("".join(f"{name + ' ms':>18}" for name in DURATIONS))
    for step in STEPS:
        inferences = delta(after[step], before[step], "inference_count")
        runs = delta(after[step], before[step], "execution_count")
        print(f"{step:<14}{inferences:>11}{runs:>6}{inferences / max(runs, 1):>7.1f}", end="")
        for name in DURATIONS:
            spent = delta(after[step], before[step], "inference_stats", name, "ns")
            requests = delta(after[step], before[step], "inference_stats", name, "count")
            print(f"{spent / 1e6 / max(requests, 1):>18.1f}", end="")
        print()
    print(
        "(per request, as Triton counts them: queue = waiting for a run; compute_* = the run that"
        " carried it)"
    )


async def main_async(args: argparse.Namespace) -> None:
    images = [photo(name) for name in args.photos]
    engine = RapidOCR(params={"Global.log_level": "error"})
    engine(images[0])  # load the sessions before timing
    loop = asyncio.get_running_loop()
    async with InferenceServerClient(args.url) as triton:

        async def via_triton(image: bytes) -> None:
            image_input = InferInput("IMAGE", [1, 1], "BYTES")
            image_input.set_data_from_numpy(np.array([[image]], dtype=np.object_))
            await triton.infer("ppocr_v6", [image_input], client_timeout=120)

        await via_triton(images[0])
        for concurrency in (1, 4):
            results: dict[str, tuple[list[float], float]] = {
                "Triton": ([], 0.0),
                "RapidOCR": ([], 0.0),
            }
            before = await step_stats(triton)
            with ThreadPoolExecutor(concurrency) as pool:

                async def in_process(image: bytes, pool: ThreadPoolExecutor = pool) -> None:
                    await loop.run_in_executor(pool, engine, image)

                for _ in range(args.rounds):
                    for label, call in (("Triton", via_triton), ("RapidOCR", in_process)):
                        latencies, wall = await run_load(call, images, args.images, concurrency)
                        results[label] = (results[label][0] + latencies, results[label][1] + wall)
            for label, (latencies, wall) in results.items():
                report(f"{label}, {concurrency} concurrent", latencies, wall)
            # Only Triton's turns show in its statistics.
            step_table(before, await step_stats(triton))
            print()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ocr_vs_rapidocr", description=__doc__)
    parser.add_argument("--url", default="127.0.0.1:4601", help="Triton gRPC address")
    parser.add_argument("--images", type=int, default=8, help="images per round and side")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    parser.add_argument("--photos", nargs="+", default=["page.png", "synthetic_text.png"])
    asyncio.run(main_async(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
