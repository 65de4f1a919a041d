"""The service registry: each vision.v1 service declares once its servicer (wired to its
pipeline and adapter), how it is added to a server, its full name, the models it needs and the
tensors its adapter expects of them. Reflection, health and the start-up model checks are all
derived from this list, so adding a service means adding an entry here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor

from server.pipeline.detection import DetectionConfig, DetectionPipeline
from server.servicers.detection import DetectionServicer
from server.settings import Settings
from server.triton import detection as triton_detection
from server.triton.calls import TritonCalls
from server.triton.tensors import ModelTensors
from vision.v1 import detection_service_pb2, detection_service_pb2_grpc


@dataclass(frozen=True, slots=True)
class Resources:
    """What servicers are built from; owned and closed by server.app."""

    settings: Settings
    triton: TritonCalls


@dataclass(frozen=True, slots=True)
class Service:
    descriptor: ServiceDescriptor
    add_to_server: Callable[[Any, grpc.aio.Server], None]
    build: Callable[[Resources], object]
    models: Callable[[Settings], list[str]]
    tensors: ModelTensors | None  # what the adapter expects of each of `models`

    @property
    def name(self) -> str:
        name: str = self.descriptor.full_name
        return name


def _detection(resources: Resources) -> DetectionServicer:
    settings = resources.settings
    task = settings.detection
    pipeline = DetectionPipeline(
        triton_detection.TritonDetector(resources.triton),
        DetectionConfig(
            models=frozenset(task.models),
            default_model=task.default_model,
            default_score_threshold=task.default_score_threshold,
            default_iou_threshold=task.default_iou_threshold,
            default_max_detections=task.default_max_detections,
            limits=settings.limits.image_limits(),
        ),
    )
    return DetectionServicer(
        pipeline, settings.limits.max_image_bytes, settings.limits.max_stream_in_flight)


SERVICES: tuple[Service, ...] = (
    Service(
        descriptor=detection_service_pb2.DESCRIPTOR.services_by_name["DetectionService"],
        add_to_server=detection_service_pb2_grpc.add_DetectionServiceServicer_to_server,
        build=_detection,
        models=lambda settings: list(settings.detection.models),
        tensors=triton_detection.TENSORS,
    ),
)
