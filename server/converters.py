"""Pure functions between the vision.v1 messages every service shares (images, models, geometry)
and domain types; no I/O, no decisions. Each servicer module holds its own task's conversions."""

from __future__ import annotations

from google.rpc import code_pb2, status_pb2

from server.domain import Box, ModelRef, Point
from vision.v1 import geometry_pb2, image_pb2, model_pb2

OK = status_pb2.Status(code=code_pb2.OK)


def image_content(image: image_pb2.Image) -> bytes:
    """The image's encoded bytes; an unset source reads as empty, which the pipeline refuses."""
    return image.content


def model_ref(model: model_pb2.ModelReference) -> ModelRef:
    return ModelRef(model.name, model.version)


def model_reference(model: ModelRef) -> model_pb2.ModelReference:
    return model_pb2.ModelReference(name=model.name, version=model.version)


def image_size(width: int, height: int) -> image_pb2.ImageSize:
    return image_pb2.ImageSize(width=width, height=height)


def box(value: Box) -> geometry_pb2.BoundingBox:
    return geometry_pb2.BoundingBox(
        x_min=value.x_min, y_min=value.y_min, x_max=value.x_max, y_max=value.y_max)


def normalized_box(value: Box) -> geometry_pb2.NormalizedBoundingBox:
    return geometry_pb2.NormalizedBoundingBox(
        x_min=value.x_min, y_min=value.y_min, x_max=value.x_max, y_max=value.y_max)


def point(value: Point) -> geometry_pb2.Point:
    return geometry_pb2.Point(x=value.x, y=value.y)
