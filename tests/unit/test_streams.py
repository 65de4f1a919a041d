"""The stream runner's bounds without a server: protocol-error cap, idle timeout and the
process-wide upload budget (reservation per image, waiting when full, nothing held after: no
image bytes kept once its reservation ends, and large buffers returned to the OS)."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import textwrap
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
from google.rpc import status_pb2

from server.errors import RequestPaths
from server.servicers.streams import (
    StreamLimits,
    UploadBudget,
    UploadStream,
    return_large_buffers_to_os,
)
from server.servicers.uploads import CompletedUpload, UploadAssembler
from tests.unit.test_uploads import END, chunk, header
from vision.v1 import detection_service_pb2 as det_pb2

ROOT = Path(__file__).resolve().parents[2]
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


def live_uploads() -> int:
    return sum(isinstance(item, CompletedUpload) for item in gc.get_objects())


async def test_a_finished_image_is_not_kept_while_the_next_message_is_awaited() -> None:
    budget = UploadBudget(1000)
    upload = stream(limits(budget))
    responses = cast(AsyncGenerator[str, None], upload.run(
        messages(header("a", 80), chunk(b"x" * 80), END, hang=True),
        FakeContext()))  # type: ignore[arg-type]
    assert await anext(responses) == "a:80"
    for _ in range(20):  # the reader is now waiting for a message that never comes
        await asyncio.sleep(0)
    assert (live_uploads(), budget.used) == (0, 0)
    await responses.aclose()


async def test_results_the_caller_has_not_read_keep_no_image_bytes() -> None:
    budget = UploadBudget(10_000)
    upload = stream(limits(budget, max_in_flight=1))  # room for 2 unread results
    images = [message for name in "abcde"
              for message in (header(name, 80), chunk(b"x" * 80), END)]
    responses = cast(AsyncGenerator[str, None], upload.run(
        messages(*images, hang=True), FakeContext()))  # type: ignore[arg-type]
    first = asyncio.ensure_future(anext(responses))
    for _ in range(50):  # every image processed; three results wait for room
        await asyncio.sleep(0)
    assert (live_uploads(), budget.used) == (0, 0)
    assert await first == "a:80"
    await responses.aclose()


def test_freed_large_buffers_go_back_to_the_os() -> None:
    """In a fresh interpreter: ten 10 MiB buffers, each followed by a small survivor, are
    freed. glibc's default (a threshold that rises after the first large free) keeps them in
    the heap behind the survivors; with return_large_buffers_to_os they are returned."""
    if not return_large_buffers_to_os():
        pytest.skip("not glibc")
    script = textwrap.dedent("""
        import os, sys
        from server.servicers.streams import return_large_buffers_to_os
        if sys.argv[1] == "fixed":
            return_large_buffers_to_os()
        page = os.sysconf("SC_PAGE_SIZE")
        rss = lambda: int(open("/proc/self/statm").read().split()[1]) * page
        first = bytes(10 << 20)
        del first  # glibc's dynamic threshold rises to 10 MiB here
        big, small = [], []
        for _ in range(10):
            big.append(os.urandom(10 << 20))
            small.append(os.urandom(300 << 10))
        before = rss()
        del big
        print((before - rss()) >> 20)
    """)

    def returned_mib(mode: str) -> int:
        done = subprocess.run([sys.executable, "-c", script, mode], capture_output=True,
                              text=True, check=True, cwd=ROOT)
        return int(done.stdout)

    assert returned_mib("default") < 20  # the behaviour the function exists to change
    assert returned_mib("fixed") >= 95
