"""An asyncio client for vision-grpc: one channel reused for every call, unary detection, and the
chunked upload stream (upload.proto) for many or large images."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import TypeVar

import grpc

from vision.v1 import (
    analysis_pb2,
    analysis_service_pb2,
    analysis_service_pb2_grpc,
    detection_pb2,
    embedding_pb2,
    embedding_service_pb2,
    embedding_service_pb2_grpc,
    face_pb2,
    face_service_pb2,
    face_service_pb2_grpc,
    image_pb2,
    ingest_pb2,
    ingest_service_pb2,
    ingest_service_pb2_grpc,
    model_service_pb2,
    model_service_pb2_grpc,
    ocr_pb2,
    ocr_service_pb2,
    ocr_service_pb2_grpc,
    search_service_pb2,
    search_service_pb2_grpc,
    upload_pb2,
)
from vision.v1 import detection_service_pb2 as det_pb2
from vision.v1 import detection_service_pb2_grpc as det_grpc

# 1 MiB chunks: well under gRPC's 4 MiB message limit, few enough messages for large images.
DEFAULT_CHUNK_BYTES = 1 << 20

Message = TypeVar("Message")


@dataclass(frozen=True)
class StreamImage:
    """One image to send over an upload stream, with its detection options."""

    request_id: str
    content: bytes
    options: detection_pb2.DetectionOptions = field(
        default_factory=detection_pb2.DetectionOptions)


def upload_messages(
    make: Callable[..., Message],
    headers_and_contents: Iterable[tuple[upload_pb2.UploadHeader, bytes]],
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> Iterator[Message]:
    """The messages of any upload stream: per image its header, its chunks, an end marker.
    `make` is the RPC's request type, e.g. `StreamDetectObjectsRequest`."""
    for header, content in headers_and_contents:
        yield make(header=header)
        for start in range(0, len(content), chunk_bytes):
            yield make(chunk=upload_pb2.ImageChunk(data=content[start:start + chunk_bytes]))
        yield make(end=upload_pb2.UploadEnd())


def detection_uploads(
    images: Iterable[StreamImage], chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> Iterator[det_pb2.StreamDetectObjectsRequest]:
    """The StreamDetectObjects messages for images."""
    return upload_messages(
        det_pb2.StreamDetectObjectsRequest,
        ((upload_pb2.UploadHeader(request_id=image.request_id, size_bytes=len(image.content),
                                  detection=image.options), image.content)
         for image in images),
        chunk_bytes,
    )


@dataclass(frozen=True)
class AnalysisImage:
    """One image to send over an analysis stream, with the analyses to run."""

    request_id: str
    content: bytes
    options: analysis_pb2.AnalysisOptions


def analysis_uploads(
    images: Iterable[AnalysisImage], chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> Iterator[analysis_service_pb2.StreamAnalyzeImagesRequest]:
    """The StreamAnalyzeImages messages for images."""
    return upload_messages(
        analysis_service_pb2.StreamAnalyzeImagesRequest,
        ((upload_pb2.UploadHeader(request_id=image.request_id, size_bytes=len(image.content),
                                  analysis=image.options), image.content)
         for image in images),
        chunk_bytes,
    )


@dataclass(frozen=True)
class IngestImage:
    """One image to index: its id (unique in the caller's tenant), bytes and metadata."""

    image_id: str
    content: bytes
    metadata: dict[str, str] = field(default_factory=dict)


def ingest_uploads(
    images: Iterable[IngestImage], chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> Iterator[ingest_service_pb2.StreamIngestImagesRequest]:
    """The StreamIngestImages messages for images; each image's request id is its image id."""
    return upload_messages(
        ingest_service_pb2.StreamIngestImagesRequest,
        ((upload_pb2.UploadHeader(
            request_id=image.image_id, size_bytes=len(image.content),
            ingest=ingest_pb2.IngestOptions(id=image.image_id, metadata=image.metadata)),
          image.content)
         for image in images),
        chunk_bytes,
    )


class VisionClient:
    """Use as `async with VisionClient("127.0.0.1:4603") as client:`; share one per process."""

    def __init__(self, target: str, timeout_s: float = 30.0) -> None:
        self._channel = grpc.aio.insecure_channel(target)
        self._detection = det_grpc.DetectionServiceStub(self._channel)
        self._embedding = embedding_service_pb2_grpc.EmbeddingServiceStub(self._channel)
        self._faces = face_service_pb2_grpc.FaceServiceStub(self._channel)
        self._ocr = ocr_service_pb2_grpc.OcrServiceStub(self._channel)
        self._analysis = analysis_service_pb2_grpc.AnalysisServiceStub(self._channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)
        self._ingest = ingest_service_pb2_grpc.IngestServiceStub(self._channel)
        self._search = search_service_pb2_grpc.SearchServiceStub(self._channel)
        self._timeout_s = timeout_s

    async def __aenter__(self) -> VisionClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def detect(
        self, content: bytes, options: detection_pb2.DetectionOptions | None = None
    ) -> det_pb2.DetectObjectsResponse:
        """Detects objects in one image (up to gRPC's 4 MiB message limit; else stream it)."""
        request = det_pb2.DetectObjectsRequest(
            image=image_pb2.Image(content=content), options=options)
        response: det_pb2.DetectObjectsResponse = await self._detection.DetectObjects(
            request, timeout=self._timeout_s)
        return response

    async def stream_detect(
        self, images: Iterable[StreamImage], chunk_bytes: int = DEFAULT_CHUNK_BYTES
    ) -> AsyncIterator[det_pb2.StreamDetectObjectsResponse]:
        """Uploads images over one stream; yields each result as it arrives (any order)."""
        call = self._detection.StreamDetectObjects(
            detection_uploads(images, chunk_bytes), timeout=self._timeout_s)
        async for response in call:
            yield response

    async def embed(
        self, content: bytes, options: embedding_pb2.EmbeddingOptions | None = None
    ) -> embedding_service_pb2.EmbedImageResponse:
        """The image's embedding and its classes, best first."""
        request = embedding_service_pb2.EmbedImageRequest(
            image=image_pb2.Image(content=content), options=options)
        response: embedding_service_pb2.EmbedImageResponse = await self._embedding.EmbedImage(
            request, timeout=self._timeout_s)
        return response

    async def detect_faces(
        self, content: bytes, options: face_pb2.FaceOptions | None = None
    ) -> face_service_pb2.DetectFacesResponse:
        """The image's faces, landmarks and (with include_embeddings) identity embeddings."""
        request = face_service_pb2.DetectFacesRequest(
            image=image_pb2.Image(content=content), options=options)
        response: face_service_pb2.DetectFacesResponse = await self._faces.DetectFaces(
            request, timeout=self._timeout_s)
        return response

    async def extract_text(
        self, content: bytes, options: ocr_pb2.OcrOptions | None = None
    ) -> ocr_service_pb2.ExtractTextResponse:
        """The image's text lines in reading order."""
        request = ocr_service_pb2.ExtractTextRequest(
            image=image_pb2.Image(content=content), options=options)
        response: ocr_service_pb2.ExtractTextResponse = await self._ocr.ExtractText(
            request, timeout=self._timeout_s)
        return response

    async def analyze(
        self, content: bytes, options: analysis_pb2.AnalysisOptions
    ) -> analysis_service_pb2.AnalyzeImageResponse:
        """Any set of analyses of one image, each with its own status."""
        request = analysis_service_pb2.AnalyzeImageRequest(
            image=image_pb2.Image(content=content), options=options)
        response: analysis_service_pb2.AnalyzeImageResponse = (
            await self._analysis.AnalyzeImage(request, timeout=self._timeout_s))
        return response

    async def stream_analyze(
        self, images: Iterable[AnalysisImage], chunk_bytes: int = DEFAULT_CHUNK_BYTES
    ) -> AsyncIterator[analysis_service_pb2.StreamAnalyzeImagesResponse]:
        """Uploads images over one stream; yields each image's analyses as they complete."""
        call = self._analysis.StreamAnalyzeImages(
            analysis_uploads(images, chunk_bytes), timeout=self._timeout_s)
        async for response in call:
            yield response

    async def list_models(
        self, task: model_service_pb2.Task.ValueType = model_service_pb2.TASK_UNSPECIFIED
    ) -> list[model_service_pb2.Model]:
        """Every model the server serves (all pages), optionally of one task."""
        models: list[model_service_pb2.Model] = []
        token = ""
        while True:
            page: model_service_pb2.ListModelsResponse = await self._models.ListModels(
                model_service_pb2.ListModelsRequest(task=task, page_token=token),
                timeout=self._timeout_s)
            models.extend(page.models)
            token = page.next_page_token
            if not token:
                return models

    async def get_model(self, name: str, version: str = "") -> model_service_pb2.Model:
        response: model_service_pb2.GetModelResponse = await self._models.GetModel(
            model_service_pb2.GetModelRequest(name=name, version=version),
            timeout=self._timeout_s)
        return response.model

    async def ingest(self, image_id: str, content: bytes,
                     metadata: dict[str, str] | None = None) -> ingest_pb2.IndexedImage:
        """Indexes one image under image_id (replacing what that id had); returns what was
        stored."""
        response: ingest_service_pb2.IngestImageResponse = await self._ingest.IngestImage(
            ingest_service_pb2.IngestImageRequest(
                options=ingest_pb2.IngestOptions(id=image_id, metadata=metadata or {}),
                image=image_pb2.Image(content=content)),
            timeout=self._timeout_s)
        return response.image

    async def stream_ingest(
        self, images: Iterable[IngestImage], chunk_bytes: int = DEFAULT_CHUNK_BYTES
    ) -> AsyncIterator[ingest_service_pb2.StreamIngestImagesResponse]:
        """Indexes images over one stream; yields each image's outcome as it is stored."""
        call = self._ingest.StreamIngestImages(
            ingest_uploads(images, chunk_bytes), timeout=self._timeout_s)
        async for response in call:
            yield response

    async def get_image(self, image_id: str) -> ingest_pb2.IndexedImage:
        response: ingest_service_pb2.GetImageResponse = await self._ingest.GetImage(
            ingest_service_pb2.GetImageRequest(id=image_id), timeout=self._timeout_s)
        return response.image

    async def delete_image(self, image_id: str) -> None:
        await self._ingest.DeleteImage(ingest_service_pb2.DeleteImageRequest(id=image_id),
                                       timeout=self._timeout_s)

    async def search(self, request: search_service_pb2.SearchRequest
                     ) -> search_service_pb2.SearchResponse:
        """One page of hits; build the request with text=, image=, face_image= or vector=."""
        response: search_service_pb2.SearchResponse = await self._search.Search(
            request, timeout=self._timeout_s)
        return response
