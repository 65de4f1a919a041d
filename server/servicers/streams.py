"""Serves any upload stream: reads it through the UploadAssembler, runs each completed image as
its own task (a bounded number at once), and yields every image's outcome as soon as it is
ready, protocol failures included. Everything a stream holds is bounded:

- results waiting for the caller: a caller that does not read slows its own upload;
- buffered upload bytes, across all streams of the process (UploadBudget): an image's declared
  `size_bytes` (times COPIES_PER_IMAGE) is reserved when its header arrives, and until it fits
  the stream is not read, so HTTP/2 flow control holds the sender back; the reservation ends
  with the image's result.
  Reserving whole images (not chunks) means a stream that got its reservation can always finish;
- silence: no message for `idle_timeout_s` ends the stream with DEADLINE_EXCEEDED (STREAM_IDLE);
- mistakes: after `max_protocol_errors` failed images the stream ends with INVALID_ARGUMENT
  (TOO_MANY_PROTOCOL_ERRORS), so endless bare end markers cannot make endless results.

An image's bytes are let go when its reservation ends (nothing the reader or a finished task
keeps refers to them), and large buffers are returned to the OS when freed
(`return_large_buffers_to_os`), so what the budget releases leaves the process.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc
from google.rpc import status_pb2

from server.domain import DeadlineExceededError, Input, InvalidArgumentError, VisionError
from server.errors import RequestPaths, abort, to_status
from server.servicers.uploads import CompletedUpload, FailedUpload, UploadAssembler, UploadMessage

Response = TypeVar("Response")

_DONE = object()
# What an image costs the server while it is uploaded and sent on, in copies of its bytes: the
# chunks, the joined image, the serialized BYTES tensor, the protobuf request to Triton
# and its serialized form (bench/overload.py, tracemalloc: 100 x 10 MB uploads with 5 images
# under way peaked ~250 MiB above idle, 5 copies each). The budget reserves that much per image.
COPIES_PER_IMAGE = 5
# glibc's mallopt parameter (malloc.h) and the size from which an allocation gets a mapping of its
# own, kept fixed.
_M_MMAP_THRESHOLD = -3
# Above the 4 MiB unary limit: streamed images (and their copies) get mappings of their own and
# leave the process when freed, while the usual unary image stays on the heap (a mapping per
# copy costs a page fault per 4 KiB touched: 4.5 ms per image in Triton's stubs at 128 KiB).
_MMAP_THRESHOLD_BYTES = 4 << 20


def return_large_buffers_to_os() -> bool:
    """Makes every allocation of 4 MiB or more (streamed image bytes and their copies) a mapping
    of its own, returned to the OS when freed; glibc only, returns whether it applied.

    By default glibc raises that threshold after the first large free (up to 32 MiB), so later
    10 MB images are carved from the heap, where a small object allocated after one keeps its
    pages from going back: 100 x 10 MB uploads left the server ~330 MiB above idle and peaked
    ~90 MiB higher than with the threshold fixed (bench/overload.py). Process-wide and
    idempotent."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    mallopt = getattr(ctypes.CDLL(name), "mallopt", None)
    if mallopt is None:  # not glibc (musl, macOS): their allocators return memory their way
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES))


class UploadBudget:
    """Upload bytes buffered by all streams of the process, at most `max_bytes`."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.used = 0
        self._changed = asyncio.Condition()
        return_large_buffers_to_os()

    async def reserve(self, size: int) -> None:
        """Waits until size bytes fit (size is at most max_bytes: the image limit is lower)."""
        size = min(size, self.max_bytes)
        async with self._changed:
            await self._changed.wait_for(lambda: self.used + size <= self.max_bytes)
            self.used += size

    async def release(self, size: int) -> None:
        size = min(size, self.max_bytes)
        async with self._changed:
            self.used -= size
            self._changed.notify_all()


@dataclass(frozen=True, slots=True)
class StreamLimits:
    max_image_bytes: int
    max_in_flight: int  # images of one stream under inference at once
    idle_timeout_s: float
    max_protocol_errors: int
    budget: UploadBudget


class UploadStream(Generic[Response]):
    """One streaming call: `async for response in UploadStream(...).run(requests, context)`."""

    def __init__(
        self,
        assembler: UploadAssembler,
        process: Callable[[CompletedUpload], Awaitable[Response]],
        failure: Callable[[str, status_pb2.Status], Response],
        paths: RequestPaths,
        limits: StreamLimits,
    ) -> None:
        self._assembler = assembler
        self._process = process
        self._failure = failure
        self._paths = paths
        self._limits = limits
        self._slots = asyncio.Semaphore(limits.max_in_flight)
        # Results waiting for the caller to read them are bounded by _room; the end marker
        # bypasses the bound so that the reader can always say it is done.
        self._room = asyncio.Semaphore(2 * limits.max_in_flight)
        self._results: asyncio.Queue[object] = asyncio.Queue()
        self._reserved = 0  # budget bytes held for the image being uploaded
        self.protocol_errors = 0

    async def run(self, requests: AsyncIterator[UploadMessage],
                  context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Response]:
        reader = asyncio.create_task(self._read(requests))
        reader.add_done_callback(lambda _: self._results.put_nowait(_DONE))
        try:
            while (item := await self._results.get()) is not _DONE:
                self._room.release()
                yield item  # type: ignore[misc]  # only Response items besides _DONE
            try:
                await reader  # re-raises what ended the reader, if anything did
            except* VisionError as group:
                error = group.exceptions[0]
                await abort(context, to_status(error, self._paths))
        finally:
            reader.cancel()

    async def _messages(self, requests: AsyncIterator[UploadMessage]
                        ) -> AsyncIterator[UploadMessage]:
        iterator = aiter(requests)
        while True:
            try:
                async with asyncio.timeout(self._limits.idle_timeout_s):
                    message = await anext(iterator)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise DeadlineExceededError(
                    f"no message for {self._limits.idle_timeout_s:g} s; the stream was ended",
                    "STREAM_IDLE") from None
            yield message

    async def _read(self, requests: AsyncIterator[UploadMessage]) -> None:
        """Reads the upload, starting each image as soon as its end marker arrives; at most
        max_in_flight run at once, which also slows the reader (backpressure)."""
        try:
            async with asyncio.TaskGroup() as group:
                async for message in self._messages(requests):
                    if message.WhichOneof("kind") == "header":
                        await self._reserve(message.header.size_bytes)
                    # Events are handled in a call of their own, so that no variable here
                    # keeps a finished image alive while the next message is awaited.
                    await self._handle(self._assembler.feed(message), group)
                await self._handle(self._assembler.close(), group)
        finally:
            await self._limits.budget.release(self._reserved)
            self._reserved = 0

    async def _reserve(self, size: int) -> None:
        await self._limits.budget.release(self._reserved)  # the open image, if any, fails now
        self._reserved = 0
        if 0 < size <= self._limits.max_image_bytes:  # else the assembler refuses the header
            reserved = min(size * COPIES_PER_IMAGE, self._limits.budget.max_bytes)
            await self._limits.budget.reserve(reserved)
            self._reserved = reserved

    async def _handle(self, events: list[CompletedUpload | FailedUpload],
                      group: asyncio.TaskGroup) -> None:
        await self._settle(events)
        while events:
            await self._dispatch(events.pop(0), group)

    async def _settle(self, events: list[CompletedUpload | FailedUpload]) -> None:
        """After a message: a reservation stays with the open image or goes to the completed
        one (whose task releases it); otherwise it is returned."""
        if self._assembler.has_open or not self._reserved:
            return
        if not any(isinstance(event, CompletedUpload) for event in events):
            await self._limits.budget.release(self._reserved)
            self._reserved = 0

    async def _dispatch(self, event: CompletedUpload | FailedUpload,
                        group: asyncio.TaskGroup) -> None:
        if isinstance(event, FailedUpload):
            self.protocol_errors += 1
            await self._emit(self._failure(event.request_id, to_status(event.error, self._paths)))
            if self.protocol_errors >= self._limits.max_protocol_errors:
                raise InvalidArgumentError.one(
                    "TOO_MANY_PROTOCOL_ERRORS", Input.REQUEST, "",
                    f"{self.protocol_errors} failed uploads on one stream; the stream was ended")
            return
        reserved, self._reserved = self._reserved, 0
        await self._slots.acquire()
        group.create_task(self._one(event, reserved))

    async def _one(self, upload: CompletedUpload, reserved: int) -> None:
        try:
            result = await self._outcome(upload)
            del upload  # its bytes go with its reservation, not when the caller reads the result
        finally:
            self._slots.release()
            await self._limits.budget.release(reserved)
        await self._emit(result)

    async def _outcome(self, upload: CompletedUpload) -> object:
        try:
            return await self._process(upload)
        except Exception as exc:  # noqa: BLE001 (each image carries its own status)
            return self._failure(upload.request_id, to_status(exc, self._paths))

    async def _emit(self, result: object) -> None:
        await self._room.acquire()
        self._results.put_nowait(result)
