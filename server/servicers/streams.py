"""Serves any upload stream: reads it through the UploadAssembler, runs each completed image as
its own task (a bounded number at once), and yields every image's outcome as soon as it is
ready, protocol failures included. The results queue is bounded too, so a caller that does not
read its results slows its own upload instead of growing the server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Generic, TypeVar

from google.rpc import status_pb2

from server.errors import RequestPaths, to_status
from server.servicers.uploads import CompletedUpload, FailedUpload, UploadAssembler, UploadMessage

Response = TypeVar("Response")

_DONE = object()


class UploadStream(Generic[Response]):
    """One streaming call: `async for response in UploadStream(...).run(requests)`."""

    def __init__(
        self,
        assembler: UploadAssembler,
        process: Callable[[CompletedUpload], Awaitable[Response]],
        failure: Callable[[str, status_pb2.Status], Response],
        paths: RequestPaths,
        max_in_flight: int,
    ) -> None:
        self._assembler = assembler
        self._process = process
        self._failure = failure
        self._paths = paths
        self._slots = asyncio.Semaphore(max_in_flight)
        # Results waiting for the caller to read them are bounded by _room; the end marker
        # bypasses the bound so that the reader can always say it is done.
        self._room = asyncio.Semaphore(2 * max_in_flight)
        self._results: asyncio.Queue[object] = asyncio.Queue()

    async def run(self, requests: AsyncIterator[UploadMessage]) -> AsyncIterator[Response]:
        reader = asyncio.create_task(self._read(requests))
        reader.add_done_callback(lambda _: self._results.put_nowait(_DONE))
        try:
            while (item := await self._results.get()) is not _DONE:
                self._room.release()
                yield item  # type: ignore[misc]  # only Response items besides _DONE
            await reader  # re-raises what ended the reader, if anything did
        finally:
            reader.cancel()

    async def _read(self, requests: AsyncIterator[UploadMessage]) -> None:
        """Reads the upload, starting each image as soon as its end marker arrives; at most
        max_in_flight run at once, which also slows the reader (backpressure)."""
        async with asyncio.TaskGroup() as group:
            async for message in requests:
                for event in self._assembler.feed(message):
                    await self._dispatch(event, group)
            for event in self._assembler.close():
                await self._dispatch(event, group)

    async def _dispatch(self, event: CompletedUpload | FailedUpload,
                        group: asyncio.TaskGroup) -> None:
        if isinstance(event, FailedUpload):
            await self._emit(self._failure(event.request_id, to_status(event.error, self._paths)))
            return
        await self._slots.acquire()
        group.create_task(self._one(event))

    async def _one(self, upload: CompletedUpload) -> None:
        try:
            result: object = await self._process(upload)
        except Exception as exc:  # noqa: BLE001 (each image carries its own status)
            result = self._failure(upload.request_id, to_status(exc, self._paths))
        finally:
            self._slots.release()
        await self._emit(result)

    async def _emit(self, result: object) -> None:
        await self._room.acquire()
        self._results.put_nowait(result)
