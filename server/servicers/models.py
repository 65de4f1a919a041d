"""vision.v1.ModelService: ListModels and GetModel over the catalogue Triton reports, and the
pure conversions between its messages and the domain. Which Task enum value each task answers
to comes from the registry (server/services.py)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grpc

from server.domain import ImageFormat, ImageLimits, Task
from server.errors import RequestPaths, unary
from server.pipeline.catalog import CatalogEntry, CatalogPipeline
from vision.v1 import model_service_pb2 as model_pb2
from vision.v1 import model_service_pb2_grpc as model_grpc

PATHS = RequestPaths(image="", options="")

Context = grpc.aio.ServicerContext[Any, Any]


class ModelServicer(model_grpc.ModelServiceServicer):
    def __init__(self, pipeline: CatalogPipeline, limits: ImageLimits,
                 task_enums: Mapping[Task, model_pb2.Task.ValueType]) -> None:
        self._pipeline = pipeline
        self._limits = limits
        self._task_enums = dict(task_enums)
        self._tasks = {value: task for task, value in task_enums.items()}

    @unary(PATHS)
    async def ListModels(  # noqa: N802 (gRPC method name)
        self, request: model_pb2.ListModelsRequest, context: Context
    ) -> model_pb2.ListModelsResponse:
        page = await self._pipeline.list_models(
            self._tasks.get(request.task), request.page_size, request.page_token)
        return model_pb2.ListModelsResponse(
            models=[model(entry, self._limits, self._task_enums) for entry in page.entries],
            next_page_token=page.next_page_token)

    @unary(PATHS)
    async def GetModel(  # noqa: N802 (gRPC method name)
        self, request: model_pb2.GetModelRequest, context: Context
    ) -> model_pb2.GetModelResponse:
        entry = await self._pipeline.get_model(request.name, request.version)
        return model_pb2.GetModelResponse(model=model(entry, self._limits, self._task_enums))


def model(entry: CatalogEntry, limits: ImageLimits,
          task_enums: Mapping[Task, model_pb2.Task.ValueType]) -> model_pb2.Model:
    info = entry.info
    return model_pb2.Model(
        name=info.name,
        task=task_enums[info.task],
        versions=[model_pb2.ModelVersion(version=v.version, ready=v.ready)
                  for v in info.versions],
        ready=info.ready,
        default_for_task=entry.default_for_task,
        output_dimension=info.output_dimension,
        input_limits=model_pb2.InputLimits(
            max_image_bytes=limits.max_bytes, max_image_pixels=limits.max_pixels,
            formats=[f.value for f in ImageFormat]),
        platform=info.platform,
    )
