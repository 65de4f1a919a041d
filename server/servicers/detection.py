"""vision.v1.DetectionService: unary DetectObjects and the StreamDetectObjects upload, and the
pure conversions between its messages and the domain."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.rpc import status_pb2

from server import converters, request_ids
from server.domain import DetectionResult, DetectOptionsInput
from server.errors import RequestPaths, unary
from server.pipeline.detection import DetectionPipeline
from server.servicers.streams import StreamLimits, UploadStream
from server.servicers.uploads import CompletedUpload, UploadAssembler
from vision.v1 import analysis_pb2, detection_pb2
from vision.v1 import detection_service_pb2 as det_pb2
from vision.v1 import detection_service_pb2_grpc as det_grpc

UNARY_PATHS = RequestPaths(image="image.content", options="options")
STREAM_PATHS = RequestPaths(image="chunk.data", options="header.detection")

Context = grpc.aio.ServicerContext[Any, Any]


class DetectionServicer(det_grpc.DetectionServiceServicer):
    def __init__(self, pipeline: DetectionPipeline, stream_limits: StreamLimits) -> None:
        self._pipeline = pipeline
        self._stream_limits = stream_limits

    @unary(UNARY_PATHS)
    async def DetectObjects(  # noqa: N802 (gRPC method name)
        self, request: det_pb2.DetectObjectsRequest, context: Context
    ) -> det_pb2.DetectObjectsResponse:
        result = await self._pipeline.detect(
            converters.image_content(request.image),
            detection_options(request.options),
            request_id=request_ids.current(),
            timeout_s=context.time_remaining(),
        )
        return detect_objects_response(result)

    async def StreamDetectObjects(  # noqa: N802 (gRPC method name)
        self, request_iterator: AsyncIterator[det_pb2.StreamDetectObjectsRequest],
        context: Context,
    ) -> AsyncIterator[det_pb2.StreamDetectObjectsResponse]:
        async def detect(upload: CompletedUpload) -> det_pb2.StreamDetectObjectsResponse:
            result = await self._pipeline.detect(
                upload.content,
                detection_options(upload.header.detection),
                request_id=upload.request_id,
                timeout_s=context.time_remaining(),
            )
            return det_pb2.StreamDetectObjectsResponse(
                request_id=upload.request_id, status=converters.OK,
                result=detect_objects_response(result))

        stream = UploadStream(
            UploadAssembler(self._stream_limits.max_image_bytes, options_field="detection"),
            detect,
            lambda request_id, status: det_pb2.StreamDetectObjectsResponse(
                request_id=request_id, status=status),
            STREAM_PATHS,
            self._stream_limits,
        )
        async for response in stream.run(request_iterator, context):
            yield response


def detection_options(options: detection_pb2.DetectionOptions) -> DetectOptionsInput:
    return DetectOptionsInput(
        model=converters.model_ref(options.model),
        score_threshold=(options.score_threshold
                         if options.HasField("score_threshold") else None),
        iou_threshold=options.iou_threshold if options.HasField("iou_threshold") else None,
        class_allowlist=tuple(options.class_allowlist),
        max_detections=options.max_detections,
    )


def detect_objects_response(
    result: DetectionResult,
) -> det_pb2.DetectObjectsResponse:
    return det_pb2.DetectObjectsResponse(
        detections=[
            detection_pb2.Detection(
                label=d.label,
                class_id=d.class_id,
                score=d.score,
                box=converters.box(d.box),
                normalized_box=converters.normalized_box(
                    d.box.normalized(result.width, result.height)),
            )
            for d in result.detections
        ],
        image_size=converters.image_size(width=result.width, height=result.height),
        model=converters.model_reference(result.model),
    )


def objects_analysis(status: status_pb2.Status,
                     result: DetectionResult | None) -> analysis_pb2.ObjectsAnalysis:
    objects = analysis_pb2.ObjectsAnalysis(status=status)
    if result is not None:
        detected = detect_objects_response(result)
        objects.detections.extend(detected.detections)
        objects.model.CopyFrom(detected.model)
    return objects
