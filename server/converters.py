"""Pure functions between vision.v1 messages and domain types; no I/O, no decisions."""

from __future__ import annotations

from google.rpc import code_pb2, status_pb2

from server.domain import Box, DetectionResult, DetectOptionsInput, ModelRef
from vision.v1 import detection_pb2, detection_service_pb2, geometry_pb2, image_pb2, model_pb2

OK = status_pb2.Status(code=code_pb2.OK)


def image_content(image: image_pb2.Image) -> bytes:
    """The image's encoded bytes; an unset source reads as empty, which the pipeline refuses."""
    return image.content


def model_ref(model: model_pb2.ModelReference) -> ModelRef:
    return ModelRef(model.name, model.version)


def model_reference(model: ModelRef) -> model_pb2.ModelReference:
    return model_pb2.ModelReference(name=model.name, version=model.version)


def detection_options(options: detection_pb2.DetectionOptions) -> DetectOptionsInput:
    return DetectOptionsInput(
        model=model_ref(options.model),
        score_threshold=(options.score_threshold
                         if options.HasField("score_threshold") else None),
        iou_threshold=options.iou_threshold if options.HasField("iou_threshold") else None,
        class_allowlist=tuple(options.class_allowlist),
        max_detections=options.max_detections,
    )


def detect_objects_response(
    result: DetectionResult,
) -> detection_service_pb2.DetectObjectsResponse:
    return detection_service_pb2.DetectObjectsResponse(
        detections=[
            detection_pb2.Detection(
                label=d.label,
                class_id=d.class_id,
                score=d.score,
                box=box(d.box),
                normalized_box=normalized_box(d.box.normalized(result.width, result.height)),
            )
            for d in result.detections
        ],
        image_size=image_pb2.ImageSize(width=result.width, height=result.height),
        model=model_reference(result.model),
    )


def box(value: Box) -> geometry_pb2.BoundingBox:
    return geometry_pb2.BoundingBox(
        x_min=value.x_min, y_min=value.y_min, x_max=value.x_max, y_max=value.y_max)


def normalized_box(value: Box) -> geometry_pb2.NormalizedBoundingBox:
    return geometry_pb2.NormalizedBoundingBox(
        x_min=value.x_min, y_min=value.y_min, x_max=value.x_max, y_max=value.y_max)
