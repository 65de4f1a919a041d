"""Request aggregation in the gateway (`aggregation.enabled`, on by default): concurrent
one-image calls for the same model go to Triton as one request of several images, and each
caller gets its own row of the outputs back, with its own decode status.

Why: every Triton call costs the server a gRPC client call (~0.1–0.2 ms of CPU) and Triton a
request of its own through its scheduler; one request of n images pays that once. Triton's
dynamic batcher still batches these requests with others (bench/REPORT.md has the measurements
and the rule for when this is on).

When a batch goes: at once while fewer than `max_batches_in_flight` batches of that model are
at Triton (so a lone call never waits), else when it holds `max_batch` images or its oldest
call has waited `max_delay_s`. By default `max_batches_in_flight` is the model's instance count
in Triton (its configuration's instance groups; FALLBACK_BATCHES_IN_FLIGHT until that is read,
or for an ensemble, which lists none): as many batches as Triton can run at once, so a further
batch would only queue there, while in the gateway it grows. With the trivial model (one
instance) that took the server from 0.75 to 0.62 ms of CPU per call at 16 in flight.

A call whose inputs exceed `max_call_bytes` (a large image, an upload) goes to Triton alone, as
with aggregation off: its decode outweighs a call's overhead many times, and 32 uploads of 10 MB
concatenated into one request held the server at 4 x its upload budget (issue 9).

Each caller keeps its own deadline: the batch carries the latest of them to Triton, and a caller
whose deadline passes or who cancels leaves the batch (before it is sent: it is not sent at all;
after: its row is dropped; when every caller of a sent batch is gone, the Triton call is
cancelled).
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from server import call_records
from server.domain import ModelRef, VisionError
from server.triton.calls import Array, TritonCalls, check_statuses
from server.triton.tensors import ModelTensors


@dataclass(eq=False, slots=True)
class _Call:
    inputs: Mapping[str, Array]
    deadline: float | None  # time.monotonic() instant
    request_id: str
    result: asyncio.Future[tuple[dict[str, Array], float]]
    batch: _Batch | None = None  # once sent


@dataclass(eq=False, slots=True)
class _Batch:
    calls: list[_Call]
    task: asyncio.Task[None] | None = None
    live: int = 0


@dataclass(eq=False, slots=True)
class _Lane:
    """The calls for one model (name, version and tensors) waiting to go, and its batches out."""

    model: ModelRef
    tensors: ModelTensors
    max_in_flight: int
    waiting: list[_Call] = field(default_factory=list)
    in_flight: int = 0
    timer: asyncio.TimerHandle | None = None


FALLBACK_BATCHES_IN_FLIGHT = 2
_CONFIG_TIMEOUT_S = 5.0


def instance_count(config: Mapping[str, Any]) -> int | None:
    """How many instances of the model Triton runs (its configuration as JSON); None for a
    model that lists no instance groups (an ensemble)."""
    groups = config.get("instance_group") or []
    if not groups:
        return None
    return sum(int(group.get("count", 1)) * max(1, len(group.get("gpus", [])))
               for group in groups)


def input_bytes(inputs: Mapping[str, Array]) -> int:
    """The bytes a call's inputs carry: a BYTES tensor's by its elements, not its pointers."""
    return sum(sum(len(item) for item in array.flat) if array.dtype == np.object_
               else int(array.nbytes) for array in inputs.values())


class Aggregator:
    """Has TritonCalls.infer's signature, so an adapter takes either. `max_batches_in_flight`
    None: each model's instance count (module docstring)."""

    def __init__(self, calls: TritonCalls, max_batch: int, max_delay_s: float,
                 max_batches_in_flight: int | None, max_call_bytes: int | None = None) -> None:
        self._calls = calls
        self._max_call_bytes = max_call_bytes
        self._max_batch = max_batch
        self._max_delay_s = max_delay_s
        self._max_batches_in_flight = max_batches_in_flight
        self._lanes: dict[tuple[str, str, ModelTensors], _Lane] = {}
        self._batches: set[_Batch] = set()
        self._lookups: set[asyncio.Task[None]] = set()

    async def infer(
        self,
        model: ModelRef,
        tensors: ModelTensors,
        inputs: Mapping[str, Array],
        request_id: str,
        timeout_s: float | None,
    ) -> dict[str, Array]:
        """One image's outputs ([1, ...] each), computed in a batch with concurrent calls."""
        if self._max_call_bytes is not None and input_bytes(inputs) > self._max_call_bytes:
            return await self._calls.infer(model, tensors, inputs, request_id, timeout_s)
        key = (model.name, model.version, tensors)
        lane = self._lanes.get(key)
        if lane is None:
            lane = self._lanes[key] = self._new_lane(model, tensors)
        if not lane.waiting and lane.in_flight < lane.max_in_flight:
            return await self._alone(lane, inputs, request_id, timeout_s)
        loop = asyncio.get_running_loop()
        call = _Call(inputs, None if timeout_s is None else time.monotonic() + timeout_s,
                     request_id, loop.create_future())
        lane.waiting.append(call)
        if len(lane.waiting) >= self._max_batch or lane.in_flight < lane.max_in_flight:
            self._send(lane)
        elif lane.timer is None:
            lane.timer = loop.call_later(self._max_delay_s, self._send, lane)
        try:
            outputs, inference_s = await call.result
        except asyncio.CancelledError:
            self._leave(lane, call)
            raise
        call_records.add_inference(inference_s)
        check_statuses(outputs)
        return outputs

    def served(self, model: ModelRef) -> ModelRef:
        return self._calls.served(model)

    async def _alone(self, lane: _Lane, inputs: Mapping[str, Array], request_id: str,
                     timeout_s: float | None) -> dict[str, Array]:
        """A call with nothing to wait for goes as a batch of its own, in the caller's task: no
        task, future or copy of its inputs, and its deadline and cancellation are its own."""
        lane.in_flight += 1
        try:
            outputs = await self._calls.infer_batch(lane.model, lane.tensors, inputs, request_id,
                                                    timeout_s)
        finally:
            self._came_back(lane)
        check_statuses(outputs)
        return outputs

    def _new_lane(self, model: ModelRef, tensors: ModelTensors) -> _Lane:
        if self._max_batches_in_flight is not None:
            return _Lane(model, tensors, self._max_batches_in_flight)
        lane = _Lane(model, tensors, FALLBACK_BATCHES_IN_FLIGHT)
        task = asyncio.get_running_loop().create_task(self._read_instances(lane))
        self._lookups.add(task)
        task.add_done_callback(self._lookups.discard)
        return lane

    async def _read_instances(self, lane: _Lane) -> None:
        """Sets the lane's limit from the model's configuration; on failure the fallback stays
        and the next lane for the model (after a restart) tries again."""
        try:
            config = await self._calls.model_config(lane.model.name, _CONFIG_TIMEOUT_S)
        except VisionError:
            return
        count = instance_count(config or {})
        if count is not None:
            lane.max_in_flight = count

    def _leave(self, lane: _Lane, call: _Call) -> None:
        if call in lane.waiting:
            lane.waiting.remove(call)
            if not lane.waiting and lane.timer is not None:
                lane.timer.cancel()
                lane.timer = None
            return
        batch = call.batch
        if batch is not None:
            batch.live -= 1
            if batch.live == 0 and batch.task is not None:
                batch.task.cancel()

    def _send(self, lane: _Lane) -> None:
        if lane.timer is not None:
            lane.timer.cancel()
            lane.timer = None
        if not lane.waiting:
            return
        calls, lane.waiting = lane.waiting[:self._max_batch], lane.waiting[self._max_batch:]
        batch = _Batch(calls, live=len(calls))
        for call in calls:
            call.batch = batch
        lane.in_flight += 1
        self._batches.add(batch)
        # A context of its own: the batch serves several calls, so no one call's request id or
        # record may see its work (each caller records the inference time itself).
        batch.task = asyncio.get_running_loop().create_task(
            self._run(lane, batch), context=contextvars.Context())
        if lane.waiting:
            if len(lane.waiting) >= self._max_batch \
                    or lane.in_flight < lane.max_in_flight:
                self._send(lane)
            else:
                lane.timer = asyncio.get_running_loop().call_later(
                    self._max_delay_s, self._send, lane)

    async def _run(self, lane: _Lane, batch: _Batch) -> None:
        calls = batch.calls
        try:
            inputs = {spec.name: np.concatenate([c.inputs[spec.name] for c in calls])
                      for spec in lane.tensors.inputs}
            deadlines = [c.deadline for c in calls]
            timeout_s = None if None in deadlines else \
                max(0.0, max(d for d in deadlines if d is not None) - time.monotonic())
            request_id = calls[0].request_id + (f"+{len(calls) - 1}" if len(calls) > 1 else "")
            began = time.perf_counter()
            outputs = await self._calls.infer_batch(lane.model, lane.tensors, inputs,
                                                    request_id, timeout_s)
            inference_s = time.perf_counter() - began
            for row, call in enumerate(calls):
                if not call.result.done():
                    call.result.set_result(
                        ({name: value[row:row + 1] for name, value in outputs.items()},
                         inference_s))
        except asyncio.CancelledError:
            for call in calls:
                call.result.cancel()
        except Exception as exc:  # noqa: BLE001 (every caller of the batch gets Triton's error)
            for call in calls:
                if not call.result.done():
                    call.result.set_exception(exc)
        finally:
            self._batches.discard(batch)
            self._came_back(lane)

    def _came_back(self, lane: _Lane) -> None:
        """A request of the lane is back from Triton: the calls waiting go, if they may now."""
        lane.in_flight -= 1
        if lane.waiting and lane.in_flight < lane.max_in_flight:
            self._send(lane)

    async def close(self) -> None:
        """Waits for the batches already at Triton (their callers are being drained)."""
        for lookup in list(self._lookups):
            lookup.cancel()
        tasks = [batch.task for batch in self._batches if batch.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
