"""Concurrent calls share the server's one Triton channel, so Triton's dynamic batcher executes
them in batches larger than one (read from Triton's own statistics)."""

from __future__ import annotations

import asyncio

from tritonclient.grpc.aio import InferenceServerClient

from tests.images import photo
from vision_client import VisionClient


async def _counts(url: str, model: str) -> tuple[int, int]:
    async with InferenceServerClient(url) as triton:
        stats = await triton.get_inference_statistics(model_name=model, as_json=True)
    (entry,) = [s for s in stats["model_stats"] if s["name"] == model]
    return int(entry.get("inference_count", 0)), int(entry.get("execution_count", 0))


async def test_32_concurrent_calls_are_batched(client: VisionClient, triton_url: str) -> None:
    images = [photo(name) for name in ("astronaut.png", "coffee.png", "chelsea.png",
                                       "motorcycle_left.png")]
    # yolox_nano on the CPU configuration is one fused step (its configs/cpu.pbtxt).
    before = await _counts(triton_url, "yolox_nano")
    responses = await asyncio.gather(*(client.detect(images[i % 4]) for i in range(32)))
    after = await _counts(triton_url, "yolox_nano")
    assert [r.detections[0].label for r in responses[:4]] == ["person", "cup", "cat",
                                                              "motorcycle"]
    inferences, executions = after[0] - before[0], after[1] - before[1]
    assert inferences == 32
    assert executions < inferences, f"{inferences} inferences in {executions} executions"
