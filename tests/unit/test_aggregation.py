"""The aggregator's logic against a Triton stand-in whose batches the test releases by hand:
rows reach their callers, statuses stay per caller, deadlines and cancellation act per caller,
and when batches go."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

from server.domain import BackendUnavailableError, InvalidArgumentError, ModelRef
from server.triton.aggregation import FALLBACK_BATCHES_IN_FLIGHT, Aggregator
from server.triton.tensors import IMAGE, IMAGE_STATUS, ModelTensors, TensorSpec

TENSORS = ModelTensors(
    inputs=(TensorSpec(IMAGE, "BYTES", (1,)),),
    outputs=(TensorSpec("ECHO", "BYTES", (1,)), TensorSpec(IMAGE_STATUS, "INT32", (1,))))
MODEL = ModelRef("stand_in", "")


class HeldTriton:
    """Records each batch request and answers it when the test releases it: ECHO repeats each
    image's bytes, IMAGE_STATUS is 1 for b"bad"."""

    def __init__(self) -> None:
        self.requests: list[tuple[list[bytes], str, float | None]] = []
        self.release = asyncio.Event()
        self.cancelled = 0
        self.error: Exception | None = None

    async def infer_batch(self, model: ModelRef, tensors: ModelTensors,
                          inputs: Mapping[str, Any], request_id: str,
                          timeout_s: float | None) -> dict[str, Any]:
        images = [bytes(v) for v in inputs[IMAGE].reshape(-1)]
        self.requests.append((images, request_id, timeout_s))
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if self.error is not None:
            raise self.error
        return {"ECHO": np.array([[i] for i in images], dtype=np.object_),
                IMAGE_STATUS: np.array([[1 if i == b"bad" else 0] for i in images], np.int32)}


def aggregator(triton: HeldTriton, max_batch: int = 32, max_delay_s: float = 60.0,
               in_flight: int = 1) -> Aggregator:
    return Aggregator(triton, max_batch, max_delay_s, in_flight)  # type: ignore[arg-type]


def call(agg: Aggregator, image: bytes, request_id: str = "r",
         timeout_s: float | None = 30.0) -> asyncio.Task[dict[str, Any]]:
    inputs = {IMAGE: np.array([[image]], dtype=np.object_)}
    return asyncio.ensure_future(agg.infer(MODEL, TENSORS, inputs, request_id, timeout_s))


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_rows_reach_their_callers_and_statuses_stay_theirs() -> None:
    triton = HeldTriton()
    agg = aggregator(triton)
    first = call(agg, b"a", "id-a")  # goes alone: no batch at Triton yet
    await settle()
    rest = [call(agg, image) for image in (b"b", b"bad", b"c")]
    await settle()
    assert [r[0] for r in triton.requests] == [[b"a"]]  # the others wait for the first batch
    triton.release.set()
    assert (await first)["ECHO"].tolist() == [[b"a"]]
    await settle()
    assert [r[0] for r in triton.requests] == [[b"a"], [b"b", b"bad", b"c"]]
    assert triton.requests[1][1] == "r+2"
    assert (await rest[0])["ECHO"].tolist() == [[b"b"]]
    with pytest.raises(InvalidArgumentError) as bad:
        await rest[1]
    assert bad.value.reason == "IMAGE_DECODE_FAILED"
    assert (await rest[2])["ECHO"].tolist() == [[b"c"]]


async def test_a_full_batch_goes_without_waiting() -> None:
    triton = HeldTriton()
    agg = aggregator(triton, max_batch=3)
    calls = [call(agg, bytes([i])) for i in range(7)]
    await settle()
    # the first alone (nothing at Triton yet), then each batch as soon as it is full
    assert [len(r[0]) for r in triton.requests] == [1, 3, 3]
    triton.release.set()
    assert [(await c)["ECHO"].tolist() for c in calls] == [[[bytes([i])]] for i in range(7)]


async def test_the_delay_sends_a_partial_batch() -> None:
    triton = HeldTriton()
    agg = aggregator(triton, max_delay_s=0.05)
    first = call(agg, b"a")
    await settle()
    waiting = call(agg, b"b")
    await asyncio.sleep(0.2)  # well past the delay; the first batch is still held
    assert [r[0] for r in triton.requests] == [[b"a"], [b"b"]]
    triton.release.set()
    await asyncio.gather(first, waiting)


async def test_a_caller_cancelled_before_sending_is_not_sent() -> None:
    triton = HeldTriton()
    agg = aggregator(triton)
    first = call(agg, b"a")
    await settle()
    gone, kept = call(agg, b"gone"), call(agg, b"kept")
    await settle()
    gone.cancel()
    await settle()
    triton.release.set()
    await first
    assert (await kept)["ECHO"].tolist() == [[b"kept"]]
    assert [r[0] for r in triton.requests] == [[b"a"], [b"kept"]]


async def test_a_caller_leaving_a_sent_batch_does_not_disturb_the_others() -> None:
    triton = HeldTriton()
    agg = aggregator(triton, max_batch=2)
    first = call(agg, b"a")
    await settle()
    calls = [call(agg, image) for image in (b"x", b"y")]  # a full batch: sent at once
    await settle()
    assert [r[0] for r in triton.requests] == [[b"a"], [b"x", b"y"]]
    calls[0].cancel()
    await settle()
    assert triton.cancelled == 0
    triton.release.set()
    await first
    assert (await calls[1])["ECHO"].tolist() == [[b"y"]]


async def test_when_every_caller_is_gone_the_triton_call_is_cancelled() -> None:
    triton = HeldTriton()
    agg = aggregator(triton)
    only = call(agg, b"a")
    await settle()
    only.cancel()
    await settle()
    assert triton.cancelled == 1


async def test_the_batch_carries_the_latest_deadline() -> None:
    triton = HeldTriton()
    agg = aggregator(triton)
    first = call(agg, b"a", timeout_s=5.0)
    await settle()
    batch = [call(agg, b"b", timeout_s=1.0), call(agg, b"c", timeout_s=9.0)]
    await settle()
    triton.release.set()
    await asyncio.gather(first, *batch)
    timeouts = [r[2] for r in triton.requests]
    assert timeouts[0] is not None and 4.5 < timeouts[0] <= 5.0
    assert timeouts[1] is not None and 8.5 < timeouts[1] <= 9.0


async def test_a_deadline_that_passes_while_waiting_leaves_the_batch() -> None:
    triton = HeldTriton()
    agg = aggregator(triton)
    first = call(agg, b"a")
    await settle()
    began = time.monotonic()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(call(agg, b"late"), 0.05)  # as grpc cancels at the deadline
    assert time.monotonic() - began < 5
    on_time = call(agg, b"b")
    await settle()
    triton.release.set()
    await first
    await on_time
    assert [r[0] for r in triton.requests] == [[b"a"], [b"b"]]


async def test_triton_errors_reach_every_caller_of_the_batch() -> None:
    triton = HeldTriton()
    triton.error = BackendUnavailableError()
    triton.release.set()
    agg = aggregator(triton, in_flight=1)
    calls = [call(agg, image) for image in (b"a", b"b", b"c")]
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(r, BackendUnavailableError) for r in results)


class ConfiguredTriton(HeldTriton):
    """HeldTriton with a model configuration listing `groups` as its instance groups."""

    def __init__(self, groups: list[dict[str, Any]]) -> None:
        super().__init__()
        self.groups = groups

    async def model_config(self, name: str, timeout_s: float) -> dict[str, Any]:
        return {"name": name, "instance_group": self.groups}


@pytest.mark.parametrize(("groups", "expected"), [
    ([{"count": 1, "kind": "KIND_CPU"}], 1),
    ([{"count": 3, "kind": "KIND_CPU"}], 3),
    ([{"count": 2, "kind": "KIND_GPU", "gpus": [0, 1]}, {"count": 1, "kind": "KIND_CPU"}], 5),
    ([], FALLBACK_BATCHES_IN_FLIGHT),  # an ensemble lists no instance groups
])
async def test_batches_in_flight_default_to_the_models_instance_count(
        groups: list[dict[str, Any]], expected: int) -> None:
    triton = ConfiguredTriton(groups)
    agg = Aggregator(triton, 32, 60.0, None)  # type: ignore[arg-type]
    triton.release.set()
    await call(agg, b"warm")  # makes the model's lane, which reads the configuration
    await settle()
    triton.release.clear()
    triton.requests.clear()
    calls = [call(agg, bytes([65 + i])) for i in range(8)]
    await settle()
    # `expected` calls go alone at once; the rest wait and go together when one comes back.
    assert [len(r[0]) for r in triton.requests] == [1] * expected
    triton.release.set()
    await asyncio.gather(*calls)
    assert [len(r[0]) for r in triton.requests] == [1] * expected + [8 - expected]


class HeldTritonWithSingles(HeldTriton):
    """HeldTriton that also answers (and records) calls made alone, through `infer`."""

    def __init__(self) -> None:
        super().__init__()
        self.alone: list[bytes] = []

    async def infer(self, model: ModelRef, tensors: ModelTensors, inputs: Mapping[str, Any],
                    request_id: str, timeout_s: float | None) -> dict[str, Any]:
        (image,) = [bytes(v) for v in inputs[IMAGE].reshape(-1)]
        self.alone.append(image)
        return {"ECHO": np.array([[image]], dtype=np.object_),
                IMAGE_STATUS: np.array([[0]], np.int32)}


async def test_a_call_larger_than_the_byte_bound_goes_to_triton_alone() -> None:
    triton = HeldTritonWithSingles()
    agg = Aggregator(triton, 32, 60.0, 1, max_call_bytes=4)  # type: ignore[arg-type]
    first = call(agg, b"a")  # at Triton, holding the lane: small calls now wait to be batched
    await settle()
    small = call(agg, b"abcd")
    large = call(agg, b"abcde")
    assert (await large)["ECHO"].tolist() == [[b"abcde"]]
    assert triton.alone == [b"abcde"] and not small.done()
    triton.release.set()
    await first
    assert (await small)["ECHO"].tolist() == [[b"abcd"]]
    assert [r[0] for r in triton.requests] == [[b"a"], [b"abcd"]]
