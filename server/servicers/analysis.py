"""vision.v1.AnalysisService: AnalyzeImage and the StreamAnalyzeImages upload, and the pure
conversions between their messages and the domain."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.rpc import status_pb2

from server import converters, request_ids
from server.errors import RequestPaths, to_status, unary
from server.pipeline.analysis import (
    EMBEDDING,
    FACES,
    OBJECTS,
    TEXT,
    AnalysisInput,
    AnalysisPipeline,
    AnalysisResult,
    Outcome,
)
from server.servicers.detection import detect_objects_response, detection_options
from server.servicers.embedding import classifications, embedding, embedding_options
from server.servicers.faces import face_options, faces
from server.servicers.ocr import ocr_options, text_lines
from server.servicers.streams import StreamLimits, UploadStream
from server.servicers.uploads import CompletedUpload, UploadAssembler
from vision.v1 import analysis_pb2
from vision.v1 import analysis_service_pb2 as an_pb2
from vision.v1 import analysis_service_pb2_grpc as an_grpc

UNARY_PATHS = RequestPaths(image="image.content", options="options")
STREAM_PATHS = RequestPaths(image="chunk.data", options="header.analysis")

Context = grpc.aio.ServicerContext[Any, Any]


class AnalysisServicer(an_grpc.AnalysisServiceServicer):
    def __init__(self, pipeline: AnalysisPipeline, stream_limits: StreamLimits) -> None:
        self._pipeline = pipeline
        self._stream_limits = stream_limits

    @unary(UNARY_PATHS)
    async def AnalyzeImage(  # noqa: N802 (gRPC method name)
        self, request: an_pb2.AnalyzeImageRequest, context: Context
    ) -> an_pb2.AnalyzeImageResponse:
        result = await self._pipeline.analyze(
            converters.image_content(request.image), analysis_input(request.options),
            request_id=request_ids.current(), timeout_s=context.time_remaining())
        return an_pb2.AnalyzeImageResponse(analysis=image_analysis(result, UNARY_PATHS))

    async def StreamAnalyzeImages(  # noqa: N802 (gRPC method name)
        self, request_iterator: AsyncIterator[an_pb2.StreamAnalyzeImagesRequest],
        context: Context,
    ) -> AsyncIterator[an_pb2.StreamAnalyzeImagesResponse]:
        async def analyze(upload: CompletedUpload) -> an_pb2.StreamAnalyzeImagesResponse:
            result = await self._pipeline.analyze(
                upload.content, analysis_input(upload.header.analysis),
                request_id=upload.request_id, timeout_s=context.time_remaining())
            return an_pb2.StreamAnalyzeImagesResponse(
                request_id=upload.request_id, status=converters.OK,
                result=image_analysis(result, STREAM_PATHS))

        stream = UploadStream(
            UploadAssembler(self._stream_limits.max_image_bytes, options_field="analysis"),
            analyze,
            lambda request_id, status: an_pb2.StreamAnalyzeImagesResponse(
                request_id=request_id, status=status),
            STREAM_PATHS,
            self._stream_limits,
        )
        async for response in stream.run(request_iterator, context):
            yield response


def analysis_input(options: analysis_pb2.AnalysisOptions) -> AnalysisInput:
    return AnalysisInput(
        objects=detection_options(options.objects) if options.HasField("objects") else None,
        embedding=(embedding_options(options.embedding)
                   if options.HasField("embedding") else None),
        faces=face_options(options.faces) if options.HasField("faces") else None,
        text=ocr_options(options.text) if options.HasField("text") else None,
    )


def _status(outcome: Outcome[Any], paths: RequestPaths, key: str) -> status_pb2.Status:
    if outcome.error is None:
        return converters.OK
    return to_status(outcome.error, RequestPaths(paths.image, f"{paths.options}.{key}"))


def image_analysis(result: AnalysisResult, paths: RequestPaths) -> analysis_pb2.ImageAnalysis:
    analysis = analysis_pb2.ImageAnalysis()
    if result.width and result.height:
        analysis.image_size.CopyFrom(converters.image_size(result.width, result.height))
    if result.objects is not None:
        objects = analysis_pb2.ObjectsAnalysis(status=_status(result.objects, paths, OBJECTS))
        if result.objects.result is not None:
            detected = detect_objects_response(result.objects.result)
            objects.detections.extend(detected.detections)
            objects.model.CopyFrom(detected.model)
        analysis.objects.CopyFrom(objects)
    if result.embedding is not None:
        embedded = analysis_pb2.EmbeddingAnalysis(
            status=_status(result.embedding, paths, EMBEDDING))
        if result.embedding.result is not None:
            found = result.embedding.result
            embedded.embedding.CopyFrom(embedding(found.embedding, found.model))
            embedded.classifications.extend(classifications(found))
        analysis.embedding.CopyFrom(embedded)
    if result.faces is not None:
        face_analysis = analysis_pb2.FacesAnalysis(status=_status(result.faces, paths, FACES))
        if result.faces.result is not None:
            face_analysis.faces.extend(faces(result.faces.result))
            face_analysis.model.CopyFrom(converters.model_reference(result.faces.result.model))
        analysis.faces.CopyFrom(face_analysis)
    if result.text is not None:
        text = analysis_pb2.TextAnalysis(status=_status(result.text, paths, TEXT))
        if result.text.result is not None:
            text.text = result.text.result.text
            text.lines.extend(text_lines(result.text.result))
            text.model.CopyFrom(converters.model_reference(result.text.result.model))
        analysis.text.CopyFrom(text)
    return analysis
