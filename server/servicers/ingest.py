"""vision.v1.IngestService: IngestImage, the StreamIngestImages upload, GetImage and
DeleteImage, and the pure conversions between their messages and the domain."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from server import converters, request_ids, tenants
from server.errors import RequestPaths, unary
from server.pipeline.ingest import IngestInput, IngestPipeline
from server.records import ImageRecord
from server.servicers.streams import StreamLimits, UploadStream
from server.servicers.uploads import CompletedUpload, UploadAssembler
from vision.v1 import detection_pb2, embedding_pb2, face_pb2, ingest_pb2, ocr_pb2
from vision.v1 import ingest_service_pb2 as ing_pb2
from vision.v1 import ingest_service_pb2_grpc as ing_grpc

UNARY_PATHS = RequestPaths(image="image.content", options="options")
STREAM_PATHS = RequestPaths(image="chunk.data", options="header.ingest")
ID_PATHS = RequestPaths(image="", options="")

Context = grpc.aio.ServicerContext[Any, Any]


class IngestServicer(ing_grpc.IngestServiceServicer):
    def __init__(self, pipeline: IngestPipeline, stream_limits: StreamLimits) -> None:
        self._pipeline = pipeline
        self._stream_limits = stream_limits

    @unary(UNARY_PATHS)
    async def IngestImage(  # noqa: N802 (gRPC method name)
        self, request: ing_pb2.IngestImageRequest, context: Context
    ) -> ing_pb2.IngestImageResponse:
        record = await self._pipeline.ingest(
            tenants.current(), ingest_input(request.options),
            converters.image_content(request.image), request_ids.current(),
            context.time_remaining())
        return ing_pb2.IngestImageResponse(image=indexed_image(record))

    async def StreamIngestImages(  # noqa: N802 (gRPC method name)
        self, request_iterator: AsyncIterator[ing_pb2.StreamIngestImagesRequest],
        context: Context,
    ) -> AsyncIterator[ing_pb2.StreamIngestImagesResponse]:
        tenant = tenants.current()

        async def ingest(upload: CompletedUpload) -> ing_pb2.StreamIngestImagesResponse:
            record = await self._pipeline.ingest(
                tenant, ingest_input(upload.header.ingest), upload.content, upload.request_id,
                context.time_remaining())
            return ing_pb2.StreamIngestImagesResponse(
                request_id=upload.request_id, status=converters.OK, image=indexed_image(record))

        stream = UploadStream(
            UploadAssembler(self._stream_limits.max_image_bytes, options_field="ingest"),
            ingest,
            lambda request_id, status: ing_pb2.StreamIngestImagesResponse(
                request_id=request_id, status=status),
            STREAM_PATHS,
            self._stream_limits,
        )
        async for response in stream.run(request_iterator, context):
            yield response

    @unary(ID_PATHS)
    async def GetImage(  # noqa: N802 (gRPC method name)
        self, request: ing_pb2.GetImageRequest, context: Context
    ) -> ing_pb2.GetImageResponse:
        record = await self._pipeline.get(tenants.current(), request.id)
        return ing_pb2.GetImageResponse(image=indexed_image(record))

    @unary(ID_PATHS)
    async def DeleteImage(  # noqa: N802 (gRPC method name)
        self, request: ing_pb2.DeleteImageRequest, context: Context
    ) -> ing_pb2.DeleteImageResponse:
        await self._pipeline.delete(tenants.current(), request.id)
        return ing_pb2.DeleteImageResponse()


def ingest_input(options: ingest_pb2.IngestOptions) -> IngestInput:
    return IngestInput(image_id=options.id, metadata=dict(options.metadata))


def indexed_image(record: ImageRecord) -> ingest_pb2.IndexedImage:
    created = timestamp_pb2.Timestamp()
    created.FromDatetime(record.created_at)
    width, height = record.width, record.height
    return ingest_pb2.IndexedImage(
        id=record.image_id,
        metadata=dict(record.metadata),
        create_time=created,
        image_size=converters.image_size(width, height),
        labels=[embedding_pb2.Classification(label=label.name, score=label.score)
                for label in record.labels],
        objects=[detection_pb2.Detection(
            label=o.label, score=o.score, box=converters.box(o.box),
            normalized_box=converters.normalized_box(o.box.normalized(width, height)))
            for o in record.objects],
        faces=[face_pb2.Face(
            box=converters.box(f.box), score=f.score,
            normalized_box=converters.normalized_box(f.box.normalized(width, height)),
            person_id=f.person_id)
            for f in record.faces],
        text_lines=[ocr_pb2.TextLine(
            text=line.text, confidence=line.confidence, box=converters.box(line.box),
            normalized_box=converters.normalized_box(line.box.normalized(width, height)))
            for line in record.ocr_lines],
        text=record.ocr_text,
        duplicate_of=record.duplicate_of,
    )
