"""Triton's own counts per model (inferences, executions) for the tests that check batching.
Triton updates a model's statistics just after its responses leave, so a test reads them once
every model has counted what it sent."""

from __future__ import annotations

import asyncio

from tritonclient.grpc.aio import InferenceServerClient

Counts = tuple[int, int]  # (inferences, executions) since Triton started


async def counts(url: str, model: str) -> Counts:
    async with InferenceServerClient(url) as triton:
        stats = await triton.get_inference_statistics(model_name=model, as_json=True)
    (entry,) = [s for s in stats["model_stats"] if s["name"] == model]
    return int(entry.get("inference_count", 0)), int(entry.get("execution_count", 0))


async def counted_since(url: str, before: dict[str, Counts], items: int) -> dict[str, Counts]:
    """(inferences, executions) per model of `before` since then, read once each model has
    counted at least `items` more inferences (TimeoutError after 30 s)."""
    async with asyncio.timeout(30):
        while True:
            after = {model: await counts(url, model) for model in before}
            deltas = {model: (after[model][0] - before[model][0],
                              after[model][1] - before[model][1]) for model in before}
            if all(inferences >= items for inferences, _ in deltas.values()):
                return deltas
            await asyncio.sleep(0.05)
