"""vision.v1.FaceService: DetectFaces, and the pure conversions between its messages and the
domain."""

from __future__ import annotations

from typing import Any

import grpc
from google.rpc import status_pb2

from server import converters, request_ids
from server.domain import FaceOptionsInput, FacesResult
from server.errors import RequestPaths, unary
from server.pipeline.faces import FacesPipeline
from server.servicers.embedding import embedding
from vision.v1 import analysis_pb2, face_pb2
from vision.v1 import face_service_pb2 as face_svc_pb2
from vision.v1 import face_service_pb2_grpc as face_grpc

UNARY_PATHS = RequestPaths(image="image.content", options="options")

Context = grpc.aio.ServicerContext[Any, Any]


class FaceServicer(face_grpc.FaceServiceServicer):
    def __init__(self, pipeline: FacesPipeline) -> None:
        self._pipeline = pipeline

    @unary(UNARY_PATHS)
    async def DetectFaces(  # noqa: N802 (gRPC method name)
        self, request: face_svc_pb2.DetectFacesRequest, context: Context
    ) -> face_svc_pb2.DetectFacesResponse:
        result = await self._pipeline.detect_faces(
            converters.image_content(request.image), face_options(request.options),
            request_id=request_ids.current(), timeout_s=context.time_remaining())
        return face_svc_pb2.DetectFacesResponse(
            faces=faces(result), image_size=converters.image_size(result.width, result.height),
            model=converters.model_reference(result.model))


def face_options(options: face_pb2.FaceOptions) -> FaceOptionsInput:
    return FaceOptionsInput(
        model=converters.model_ref(options.model),
        score_threshold=(options.score_threshold
                         if options.HasField("score_threshold") else None),
        include_embeddings=options.include_embeddings,
        max_faces=options.max_faces,
    )


def faces(result: FacesResult) -> list[face_pb2.Face]:
    return [
        face_pb2.Face(
            box=converters.box(face.box),
            normalized_box=converters.normalized_box(
                face.box.normalized(result.width, result.height)),
            score=face.score,
            landmarks=[converters.point(p) for p in face.landmarks],
            embedding=(embedding(face.embedding, result.model)
                       if face.embedding is not None else None),
        )
        for face in result.faces
    ]


def faces_analysis(status: status_pb2.Status,
                   result: FacesResult | None) -> analysis_pb2.FacesAnalysis:
    found = analysis_pb2.FacesAnalysis(status=status)
    if result is not None:
        found.faces.extend(faces(result))
        found.model.CopyFrom(converters.model_reference(result.model))
    return found
