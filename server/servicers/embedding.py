"""vision.v1.EmbeddingService: EmbedImage (and EmbedText, which needs a text-embedding model),
and the pure conversions between its messages and the domain."""

from __future__ import annotations

from typing import Any

import grpc
from google.rpc import status_pb2

from server import converters, request_ids
from server.domain import EmbeddingResult, EmbedOptionsInput, ModelRef
from server.errors import RequestPaths, unary
from server.pipeline.embedding import EmbeddingPipeline
from vision.v1 import analysis_pb2, embedding_pb2
from vision.v1 import embedding_service_pb2 as emb_pb2
from vision.v1 import embedding_service_pb2_grpc as emb_grpc

UNARY_PATHS = RequestPaths(image="image.content", options="options")
TEXT_PATHS = RequestPaths(image="", options="")

Context = grpc.aio.ServicerContext[Any, Any]


class EmbeddingServicer(emb_grpc.EmbeddingServiceServicer):
    def __init__(self, pipeline: EmbeddingPipeline) -> None:
        self._pipeline = pipeline

    @unary(UNARY_PATHS)
    async def EmbedImage(  # noqa: N802 (gRPC method name)
        self, request: emb_pb2.EmbedImageRequest, context: Context
    ) -> emb_pb2.EmbedImageResponse:
        result = await self._pipeline.embed(
            converters.image_content(request.image), embedding_options(request.options),
            request_id=request_ids.current(), timeout_s=context.time_remaining())
        return embed_image_response(result)

    @unary(TEXT_PATHS)
    async def EmbedText(  # noqa: N802 (gRPC method name)
        self, request: emb_pb2.EmbedTextRequest, context: Context
    ) -> emb_pb2.EmbedTextResponse:
        self._pipeline.embed_text(request.text)
        return emb_pb2.EmbedTextResponse()


def embedding_options(options: embedding_pb2.EmbeddingOptions) -> EmbedOptionsInput:
    return EmbedOptionsInput(model=converters.model_ref(options.model),
                             max_classifications=options.max_classifications)


def embedding(values: tuple[float, ...], model: ModelRef) -> embedding_pb2.Embedding:
    return embedding_pb2.Embedding(values=values, model=converters.model_reference(model))


def classifications(result: EmbeddingResult) -> list[embedding_pb2.Classification]:
    return [embedding_pb2.Classification(label=c.label, class_id=c.class_id, score=c.score)
            for c in result.classifications]


def embed_image_response(result: EmbeddingResult) -> emb_pb2.EmbedImageResponse:
    return emb_pb2.EmbedImageResponse(
        embedding=embedding(result.embedding, result.model),
        classifications=classifications(result),
        image_size=converters.image_size(result.width, result.height),
        model=converters.model_reference(result.model),
    )


def embedding_analysis(status: status_pb2.Status,
                       result: EmbeddingResult | None) -> analysis_pb2.EmbeddingAnalysis:
    embedded = analysis_pb2.EmbeddingAnalysis(status=status)
    if result is not None:
        embedded.embedding.CopyFrom(embedding(result.embedding, result.model))
        embedded.classifications.extend(classifications(result))
    return embedded
