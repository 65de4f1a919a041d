"""vision.v1.AnalysisService: AnalyzeImage and the StreamAnalyzeImages upload, and the pure
conversions between their messages and the domain. Each task's own conversions (its options
message in, its analysis message out) come from the registry (server/services.py) as one
AnalysisConversion per task, so the tasks are not named here."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import grpc
from google.protobuf.message import Message
from google.rpc import status_pb2

from server import converters, request_ids
from server.errors import RequestPaths, to_status, unary
from server.pipeline.analysis import (
    AnalysisInput,
    AnalysisKey,
    AnalysisPipeline,
    AnalysisResult,
    Asked,
    ImageResult,
    Outcome,
)
from server.servicers.streams import StreamLimits, UploadStream
from server.servicers.uploads import CompletedUpload, UploadAssembler
from vision.v1 import analysis_pb2
from vision.v1 import analysis_service_pb2 as an_pb2
from vision.v1 import analysis_service_pb2_grpc as an_grpc

UNARY_PATHS = RequestPaths(image="image.content", options="options")
STREAM_PATHS = RequestPaths(image="chunk.data", options="header.analysis")

Context = grpc.aio.ServicerContext[Any, Any]
G = TypeVar("G")
R = TypeVar("R", bound=ImageResult)


@dataclass(frozen=True, slots=True)
class AnalysisConversion(Generic[G, R]):
    """One task's messages in an analysis: its field of AnalysisOptions (named by the key) read
    into its options, and its outcome written as its field of ImageAnalysis (same name)."""

    key: AnalysisKey[G, R]
    # The task's options message (the AnalysisOptions field) to its options as given.
    options: Callable[[Any], G]
    # The task's analysis message from its status and, when it succeeded, its result.
    message: Callable[[status_pb2.Status, R | None], Message]

    def asked(self, options: analysis_pb2.AnalysisOptions) -> Asked | None:
        given: Message = options  # the generic Message API names a field by any string
        if not given.HasField(self.key.name):
            return None
        return self.key.ask(self.options(getattr(options, self.key.name)))

    def write(self, analysis: analysis_pb2.ImageAnalysis, result: AnalysisResult,
              paths: RequestPaths) -> None:
        outcome = result.outcome(self.key)
        if outcome is not None:
            status = _status(outcome, paths, self.key.name)
            getattr(analysis, self.key.name).CopyFrom(self.message(status, outcome.result))


class AnalysisServicer(an_grpc.AnalysisServiceServicer):
    def __init__(self, pipeline: AnalysisPipeline, stream_limits: StreamLimits,
                 conversions: Sequence[AnalysisConversion[Any, Any]]) -> None:
        self._pipeline = pipeline
        self._stream_limits = stream_limits
        self._conversions = tuple(conversions)

    @unary(UNARY_PATHS)
    async def AnalyzeImage(  # noqa: N802 (gRPC method name)
        self, request: an_pb2.AnalyzeImageRequest, context: Context
    ) -> an_pb2.AnalyzeImageResponse:
        result = await self._pipeline.analyze(
            converters.image_content(request.image),
            analysis_input(request.options, self._conversions),
            request_id=request_ids.current(), timeout_s=context.time_remaining())
        return an_pb2.AnalyzeImageResponse(
            analysis=image_analysis(result, UNARY_PATHS, self._conversions))

    async def StreamAnalyzeImages(  # noqa: N802 (gRPC method name)
        self, request_iterator: AsyncIterator[an_pb2.StreamAnalyzeImagesRequest],
        context: Context,
    ) -> AsyncIterator[an_pb2.StreamAnalyzeImagesResponse]:
        async def analyze(upload: CompletedUpload) -> an_pb2.StreamAnalyzeImagesResponse:
            result = await self._pipeline.analyze(
                upload.content, analysis_input(upload.header.analysis, self._conversions),
                request_id=upload.request_id, timeout_s=context.time_remaining())
            return an_pb2.StreamAnalyzeImagesResponse(
                request_id=upload.request_id, status=converters.OK,
                result=image_analysis(result, STREAM_PATHS, self._conversions))

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


def analysis_input(options: analysis_pb2.AnalysisOptions,
                   conversions: Sequence[AnalysisConversion[Any, Any]]) -> AnalysisInput:
    return AnalysisInput(*(asked for conversion in conversions
                           if (asked := conversion.asked(options)) is not None))


def _status(outcome: Outcome[Any], paths: RequestPaths, key: str) -> status_pb2.Status:
    if outcome.error is None:
        return converters.OK
    return to_status(outcome.error, RequestPaths(paths.image, f"{paths.options}.{key}"))


def image_analysis(result: AnalysisResult, paths: RequestPaths,
                   conversions: Sequence[AnalysisConversion[Any, Any]]
                   ) -> analysis_pb2.ImageAnalysis:
    analysis = analysis_pb2.ImageAnalysis()
    if result.width and result.height:
        analysis.image_size.CopyFrom(converters.image_size(result.width, result.height))
    for conversion in conversions:
        conversion.write(analysis, result, paths)
    return analysis
