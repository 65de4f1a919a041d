"""vision.v1.DetectionService: unary Detect and the chunked StreamDetect upload."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import grpc

from server import converters, errors
from server.pipeline.detection import DetectionPipeline
from server.servicers.uploads import CompletedUpload, FailedUpload, UploadAssembler
from vision.v1 import detection_service_pb2 as det_pb2
from vision.v1 import detection_service_pb2_grpc as det_grpc

# A streamed image's fields, named as the stream carries them rather than as DetectRequest does.
_STREAM_FIELDS = {"image.content": "chunk.data", "options": "header.options"}
_DONE = object()

Context = grpc.aio.ServicerContext[object, object]


class DetectionServicer(det_grpc.DetectionServiceServicer):
    def __init__(self, pipeline: DetectionPipeline, max_image_bytes: int,
                 max_stream_in_flight: int) -> None:
        self._pipeline = pipeline
        self._max_image_bytes = max_image_bytes
        self._max_in_flight = max_stream_in_flight

    async def Detect(  # noqa: N802 (gRPC method name)
        self, request: det_pb2.DetectRequest, context: Context
    ) -> det_pb2.DetectResponse:
        try:
            result = await self._pipeline.detect(
                request.image.content,
                converters.options_from_proto(request.options),
                request_id=_request_id(context),
                timeout_s=context.time_remaining(),
            )
        except Exception as exc:  # noqa: BLE001 (every error becomes a status; see errors.py)
            await errors.abort(context, exc)
            raise  # unreachable: abort raises
        return converters.detect_response(result)

    async def StreamDetect(  # noqa: N802 (gRPC method name)
        self, request_iterator: AsyncIterator[det_pb2.StreamDetectRequest], context: Context
    ) -> AsyncIterator[det_pb2.StreamDetectResponse]:
        results: asyncio.Queue[object] = asyncio.Queue()
        reader = asyncio.create_task(self._read_uploads(request_iterator, context, results))
        reader.add_done_callback(lambda _: results.put_nowait(_DONE))
        try:
            while (item := await results.get()) is not _DONE:
                assert isinstance(item, det_pb2.StreamDetectResponse)
                yield item
            await reader  # re-raises what ended the reader, if anything did
        finally:
            reader.cancel()

    async def _read_uploads(
        self,
        request_iterator: AsyncIterator[det_pb2.StreamDetectRequest],
        context: Context,
        results: asyncio.Queue[object],
    ) -> None:
        """Reads the upload, starting each image's detection as soon as its end marker arrives;
        at most max_stream_in_flight run at once, which also slows the reader (backpressure)."""
        assembler = UploadAssembler(self._max_image_bytes)
        slots = asyncio.Semaphore(self._max_in_flight)
        async with asyncio.TaskGroup() as group:
            async for message in request_iterator:
                for event in assembler.feed(message):
                    await self._dispatch(event, context, results, slots, group)
            for event in assembler.close():
                await self._dispatch(event, context, results, slots, group)

    async def _dispatch(
        self,
        event: CompletedUpload | FailedUpload,
        context: Context,
        results: asyncio.Queue[object],
        slots: asyncio.Semaphore,
        group: asyncio.TaskGroup,
    ) -> None:
        if isinstance(event, FailedUpload):
            results.put_nowait(
                converters.stream_failure(event.request_id, errors.to_status(event.error)))
            return
        await slots.acquire()
        group.create_task(self._detect_one(event, context, results, slots))

    async def _detect_one(
        self,
        upload: CompletedUpload,
        context: Context,
        results: asyncio.Queue[object],
        slots: asyncio.Semaphore,
    ) -> None:
        try:
            result = await self._pipeline.detect(
                upload.content,
                converters.options_from_proto(upload.options),
                request_id=upload.request_id,
                timeout_s=context.time_remaining(),
            )
            results.put_nowait(converters.stream_result(upload.request_id, result))
        except Exception as exc:  # noqa: BLE001 (each image carries its own status)
            status = errors.to_status(exc, _STREAM_FIELDS)
            results.put_nowait(converters.stream_failure(upload.request_id, status))
        finally:
            slots.release()


def _request_id(context: Context) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id" and isinstance(value, str) and value:
            return value[:128]
    return uuid.uuid4().hex
