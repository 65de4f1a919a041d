"""Print latency, throughput and Triton batch sizes for the embedding and face models.

A quick measurement against a running Triton (`python -m tools.local_triton start`), not a
benchmark suite: for each model and concurrency it sends the same photo mix, then reports the
p50 latency per request (one image each), images per second, and the average batch size each
step executed, from Triton's own statistics over the run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from tritonclient.grpc import InferInput
from tritonclient.grpc.aio import InferenceServerClient

PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "images"
EMBEDDING_PHOTOS = ("chelsea.png", "coffee.png", "astronaut.png", "obama.jpg", "sample4.jpg")
FACE_PHOTOS = ("obama.jpg", "astronaut.png", "sample4.jpg", "biden.jpg", "chelsea.png")
STEPS = {
    "mobilenet_v2": ("mobilenet_v2_preprocess", "mobilenet_v2_onnx", "mobilenet_v2_postprocess"),
    "yunet_mobilefacenet": ("yunet_mobilefacenet", "yunet_onnx", "mobilefacenet_onnx"),
}


def bytes_input(name: str, data: bytes) -> InferInput:
    tensor = InferInput(name, [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[data]], dtype=np.object_))
    return tensor


def embedding_inputs(data: bytes) -> list[InferInput]:
    top_k = InferInput("TOP_K", [1, 1], "INT32")
    top_k.set_data_from_numpy(np.array([[5]], dtype=np.int32))
    return [bytes_input("IMAGE", data), top_k]


def face_inputs(data: bytes) -> list[InferInput]:
    threshold = InferInput("SCORE_THRESHOLD", [1, 1], "FP32")
    threshold.set_data_from_numpy(np.array([[0.6]], dtype=np.float32))
    include = InferInput("INCLUDE_EMBEDDINGS", [1, 1], "BOOL")
    include.set_data_from_numpy(np.array([[True]], dtype=np.bool_))
    return [bytes_input("IMAGE", data), threshold, include]


async def step_counts(client: InferenceServerClient, model: str) -> tuple[int, int]:
    stats = await client.get_inference_statistics(model_name=model, as_json=True)
    (entry,) = [s for s in stats["model_stats"] if s["name"] == model]
    return int(entry.get("inference_count", 0)), int(entry.get("execution_count", 0))


async def measure(
    client: InferenceServerClient,
    model: str,
    make_inputs: Callable[[bytes], list[InferInput]],
    photos: Sequence[bytes],
    concurrency: int,
    requests: int,
    report: bool = True,
) -> None:
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(photos[i % len(photos)])
    latencies: list[float] = []

    async def worker() -> None:
        while not queue.empty():
            data = queue.get_nowait()
            start = time.perf_counter()
            await client.infer(model, make_inputs(data))
            latencies.append(time.perf_counter() - start)

    before = [await step_counts(client, step) for step in STEPS[model]]
    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    after = [await step_counts(client, step) for step in STEPS[model]]
    batches = ", ".join(
        f"{step} {(a[0] - b[0]) / max(1, a[1] - b[1]):.2f}"
        for step, a, b in zip(STEPS[model], after, before, strict=True)
    )
    if report:
        print(
            f"{model} c={concurrency}: p50 {statistics.median(latencies) * 1000:.1f} ms, "
            f"{requests / elapsed:.1f} images/s; mean batch: {batches}"
        )


async def run(url: str, requests: int) -> None:
    async with InferenceServerClient(url) as client:
        for model, make_inputs, names in (
            ("mobilenet_v2", embedding_inputs, EMBEDDING_PHOTOS),
            ("yunet_mobilefacenet", face_inputs, FACE_PHOTOS),
        ):
            photos = [(PHOTOS / name).read_bytes() for name in names]
            # Warm-up: the first calls of each step pay for lazy initialisation.
            await measure(client, model, make_inputs, photos, 1, len(photos), report=False)
            for concurrency in (1, 8):
                await measure(client, model, make_inputs, photos, concurrency, requests)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.measure_models", description=__doc__)
    parser.add_argument("--url", default="127.0.0.1:4601", help="Triton gRPC host:port")
    parser.add_argument("--requests", type=int, default=60, help="requests per measurement")
    args = parser.parse_args(argv)
    asyncio.run(run(args.url, args.requests))
    return 0


if __name__ == "__main__":
    sys.exit(main())
