"""Concurrent calls share the server's one Triton channel, so Triton's dynamic batcher executes
them in batches larger than one (read from Triton's own statistics)."""

from __future__ import annotations

import asyncio

from tests.images import photo
from tests.integration.triton_statistics import counted_since, counts
from vision_client import VisionClient


async def test_32_concurrent_calls_are_batched(client: VisionClient, triton_url: str) -> None:
    images = [photo(name) for name in ("astronaut.png", "coffee.png", "chelsea.png",
                                       "motorcycle_left.png")]
    # yolox_nano on the CPU configuration is one fused step (its configs/cpu.pbtxt).
    before = {"yolox_nano": await counts(triton_url, "yolox_nano")}
    responses = await asyncio.gather(*(client.detect(images[i % 4]) for i in range(32)))
    deltas = await counted_since(triton_url, before, 32)
    assert [r.detections[0].label for r in responses[:4]] == ["person", "cup", "cat",
                                                              "motorcycle"]
    inferences, executions = deltas["yolox_nano"]
    assert inferences == 32
    assert executions < inferences, f"{inferences} inferences in {executions} executions"
