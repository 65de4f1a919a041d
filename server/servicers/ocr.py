"""vision.v1.OcrService: ExtractText, and the pure conversions between its messages and the
domain."""

from __future__ import annotations

from typing import Any

import grpc
from google.rpc import status_pb2

from server import converters, request_ids
from server.domain import OcrOptionsInput, OcrResult
from server.errors import RequestPaths, unary
from server.pipeline.ocr import OcrPipeline
from vision.v1 import analysis_pb2, ocr_pb2
from vision.v1 import ocr_service_pb2 as ocr_svc_pb2
from vision.v1 import ocr_service_pb2_grpc as ocr_grpc

UNARY_PATHS = RequestPaths(image="image.content", options="options")

Context = grpc.aio.ServicerContext[Any, Any]


class OcrServicer(ocr_grpc.OcrServiceServicer):
    def __init__(self, pipeline: OcrPipeline) -> None:
        self._pipeline = pipeline

    @unary(UNARY_PATHS)
    async def ExtractText(  # noqa: N802 (gRPC method name)
        self, request: ocr_svc_pb2.ExtractTextRequest, context: Context
    ) -> ocr_svc_pb2.ExtractTextResponse:
        result = await self._pipeline.read_text(
            converters.image_content(request.image), ocr_options(request.options),
            request_id=request_ids.current(), timeout_s=context.time_remaining())
        return ocr_svc_pb2.ExtractTextResponse(
            text=result.text, lines=text_lines(result),
            image_size=converters.image_size(result.width, result.height),
            model=converters.model_reference(result.model))


def ocr_options(options: ocr_pb2.OcrOptions) -> OcrOptionsInput:
    return OcrOptionsInput(model=converters.model_ref(options.model))


def text_lines(result: OcrResult) -> list[ocr_pb2.TextLine]:
    return [
        ocr_pb2.TextLine(
            text=line.text,
            confidence=line.confidence,
            box=converters.box(line.box),
            normalized_box=converters.normalized_box(
                line.box.normalized(result.width, result.height)),
            polygon=[converters.point(p) for p in line.polygon],
        )
        for line in result.lines
    ]


def text_analysis(status: status_pb2.Status,
                  result: OcrResult | None) -> analysis_pb2.TextAnalysis:
    text = analysis_pb2.TextAnalysis(status=status)
    if result is not None:
        text.text = result.text
        text.lines.extend(text_lines(result))
        text.model.CopyFrom(converters.model_reference(result.model))
    return text
