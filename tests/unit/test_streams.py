"""The stream runner's bounds without a server: protocol-error cap, idle timeout and the
process-wide upload budget (reservation per image, waiting when full, nothing held after)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from google.rpc import status_pb2

from server.errors import RequestPaths
from server.servicers.streams import StreamLimits, UploadBudget, UploadStream
from server.servicers.uploads import CompletedUpload, UploadAssembler
from tests.unit.test_uploads import END, chunk, header
from vision.v1 import detection_service_pb2 as det_pb2

PATHS = RequestPaths(image="chunk.data", options="header.detection")


class Aborted(Exception):
    pass


class FakeContext:
    def __init__(self) -> None:
        self.status: status_pb2.Status | None = None

    async def abort(self, code: Any, details: str, trailing_metadata: Any) -> None:
        """Keeps the google.rpc.Status that grpc_status packed into the trailing metadata."""
        self.status = status_pb2.Status.FromString(
            dict(trailing_metadata)["grpc-status-details-bin"])
        raise Aborted


def limits(budget: UploadBudget, **overrides: Any) -> StreamLimits:
    values: dict[str, Any] = {"max_image_bytes": 100, "max_in_flight": 2,
                              "idle_timeout_s": 30.0, "max_protocol_errors": 16,
                              "budget": budget}
    values.update(overrides)
    return StreamLimits(**values)


def stream(limits: StreamLimits, process: Any = None) -> UploadStream[str]:
    async def echo(upload: CompletedUpload) -> str:
        return f"{upload.request_id}:{len(upload.content)}"

    return UploadStream(UploadAssembler(limits.max_image_bytes, "detection"), process or echo,
                        lambda request_id, status: f"failed {request_id} {status.message}",
                        PATHS, limits)


async def messages(*items: det_pb2.StreamDetectObjectsRequest,
                   hang: bool = False) -> AsyncIterator[det_pb2.StreamDetectObjectsRequest]:
    for item in items:
        yield item
    if hang:
        await asyncio.Event().wait()


async def collect(upload: UploadStream[str], requests: AsyncIterator[Any],
                  context: FakeContext) -> list[str]:
    seen = []
    with pytest.raises(Aborted):
        async for response in upload.run(requests, context):  # type: ignore[arg-type]
            seen.append(response)
    return seen


async def test_endless_bare_end_markers_end_the_stream_after_the_cap() -> None:
    budget = UploadBudget(1000)
    context = FakeContext()
    seen = await collect(stream(limits(budget, max_protocol_errors=3)),
                         messages(*[END] * 1000), context)
    assert seen == ["failed  end: an end marker arrived with no open image"] * 3
    assert context.status is not None
    assert (context.status.code, context.status.message) == (
        3, "3 failed uploads on one stream; the stream was ended")


async def test_a_silent_stream_ends_with_deadline_exceeded_and_frees_its_reservation() -> None:
    budget = UploadBudget(1000)
    context = FakeContext()
    seen = await collect(stream(limits(budget, idle_timeout_s=0.05)),
                         messages(header("a", 10), chunk(b"12345"), hang=True), context)
    assert seen == []
    assert context.status is not None and context.status.code == 4
    assert "no message for 0.05 s" in context.status.message
    assert budget.used == 0


async def test_a_full_budget_holds_the_next_header_until_an_image_is_done() -> None:
    budget = UploadBudget(500)  # an image reserves 5x its size
    release, running = asyncio.Event(), asyncio.Event()
    started: list[str] = []

    async def slow(upload: CompletedUpload) -> str:
        started.append(upload.request_id)
        running.set()
        await release.wait()
        return upload.request_id

    upload = stream(limits(budget), slow)
    responses = upload.run(messages(header("a", 80), chunk(b"x" * 80), END,
                                    header("b", 50), chunk(b"y" * 50), END),
                           FakeContext())  # type: ignore[arg-type]
    first = asyncio.ensure_future(anext(responses))
    await running.wait()
    for _ in range(20):  # let the reader run as far as it can: to b's header
        await asyncio.sleep(0)
    assert (started, budget.used) == (["a"], 400)  # b's 5 x 50 do not fit beside a's 5 x 80
    release.set()
    assert await first == "a"
    assert await anext(responses) == "b"
    with pytest.raises(StopAsyncIteration):
        await anext(responses)
    assert budget.used == 0
