"""vision.v1.DetectionService: unary DetectObjects and the StreamDetectObjects upload."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from server import converters, request_ids
from server.errors import RequestPaths, unary
from server.pipeline.detection import DetectionPipeline
from server.servicers.streams import UploadStream
from server.servicers.uploads import CompletedUpload, UploadAssembler
from vision.v1 import detection_service_pb2 as det_pb2
from vision.v1 import detection_service_pb2_grpc as det_grpc

UNARY_PATHS = RequestPaths(image="image.content", options="options")
STREAM_PATHS = RequestPaths(image="chunk.data", options="header.detection")

Context = grpc.aio.ServicerContext[Any, Any]


class DetectionServicer(det_grpc.DetectionServiceServicer):
    def __init__(self, pipeline: DetectionPipeline, max_image_bytes: int,
                 max_stream_in_flight: int) -> None:
        self._pipeline = pipeline
        self._max_image_bytes = max_image_bytes
        self._max_in_flight = max_stream_in_flight

    @unary(UNARY_PATHS)
    async def DetectObjects(  # noqa: N802 (gRPC method name)
        self, request: det_pb2.DetectObjectsRequest, context: Context
    ) -> det_pb2.DetectObjectsResponse:
        result = await self._pipeline.detect(
            converters.image_content(request.image),
            converters.detection_options(request.options),
            request_id=request_ids.current(),
            timeout_s=context.time_remaining(),
        )
        return converters.detect_objects_response(result)

    async def StreamDetectObjects(  # noqa: N802 (gRPC method name)
        self, request_iterator: AsyncIterator[det_pb2.StreamDetectObjectsRequest],
        context: Context,
    ) -> AsyncIterator[det_pb2.StreamDetectObjectsResponse]:
        async def detect(upload: CompletedUpload) -> det_pb2.StreamDetectObjectsResponse:
            result = await self._pipeline.detect(
                upload.content,
                converters.detection_options(upload.header.detection),
                request_id=upload.request_id,
                timeout_s=context.time_remaining(),
            )
            return det_pb2.StreamDetectObjectsResponse(
                request_id=upload.request_id, status=converters.OK,
                result=converters.detect_objects_response(result))

        stream = UploadStream(
            UploadAssembler(self._max_image_bytes, options_field="detection"),
            detect,
            lambda request_id, status: det_pb2.StreamDetectObjectsResponse(
                request_id=request_id, status=status),
            STREAM_PATHS,
            self._max_in_flight,
        )
        async for response in stream.run(request_iterator):
            yield response
