"""Pure functions between vision.v1 messages and domain types; no I/O, no decisions."""

from __future__ import annotations

from google.rpc import status_pb2

from server.domain import Box, DetectionResult, DetectOptionsInput, ModelRef
from vision.v1 import (
    detection_service_pb2 as det_pb2,
)
from vision.v1 import (
    geometry_pb2,
    image_pb2,
    model_pb2,
)


def options_from_proto(options: det_pb2.DetectionOptions) -> DetectOptionsInput:
    return DetectOptionsInput(
        model=ModelRef(options.model.name, options.model.version),
        score_threshold=(options.score_threshold
                         if options.HasField("score_threshold") else None),
        iou_threshold=options.iou_threshold if options.HasField("iou_threshold") else None,
        class_allowlist=tuple(options.class_allowlist),
        max_detections=options.max_detections,
    )


def detect_response(result: DetectionResult) -> det_pb2.DetectResponse:
    return det_pb2.DetectResponse(
        detections=[
            det_pb2.Detection(
                label=d.label,
                class_id=d.class_id,
                score=d.score,
                box=_box(d.box),
                normalized_box=_normalized_box(d.box.normalized(result.width, result.height)),
            )
            for d in result.detections
        ],
        image_size=image_pb2.ImageSize(width=result.width, height=result.height),
        model=model_pb2.ModelReference(name=result.model.name, version=result.model.version),
    )


def stream_result(request_id: str, result: DetectionResult) -> det_pb2.StreamDetectResponse:
    return det_pb2.StreamDetectResponse(
        request_id=request_id, status=status_pb2.Status(code=0), result=detect_response(result)
    )


def stream_failure(request_id: str, status: status_pb2.Status) -> det_pb2.StreamDetectResponse:
    return det_pb2.StreamDetectResponse(request_id=request_id, status=status)


def _box(box: Box) -> geometry_pb2.BoundingBox:
    return geometry_pb2.BoundingBox(
        x_min=box.x_min, y_min=box.y_min, x_max=box.x_max, y_max=box.y_max
    )


def _normalized_box(box: Box) -> geometry_pb2.NormalizedBoundingBox:
    return geometry_pb2.NormalizedBoundingBox(
        x_min=box.x_min, y_min=box.y_min, x_max=box.x_max, y_max=box.y_max
    )
