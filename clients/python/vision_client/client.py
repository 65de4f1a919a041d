"""An asyncio client for vision-grpc: one channel reused for every call (TLS and an API key
optional), default deadlines, retries with backoff (retry.py), typed errors (errors.py), unary
calls, and the chunked upload stream (upload.proto) for many or large images, resumable across
reconnects (`detect_many`)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

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
    people_service_pb2,
    people_service_pb2_grpc,
    person_pb2,
    search_service_pb2,
    search_service_pb2_grpc,
    upload_pb2,
)
from vision.v1 import detection_service_pb2 as det_pb2
from vision.v1 import detection_service_pb2_grpc as det_grpc
from vision_client.errors import vision_error
from vision_client.retry import RetryPolicy

# 1 MiB chunks: well under gRPC's 4 MiB message limit, few enough messages for large images.
DEFAULT_CHUNK_BYTES = 1 << 20

# Unary calls: long enough for a cold model on a CPU machine, short enough to notice a hang.
DEFAULT_TIMEOUT_S = 30.0
# Images in flight on one stream: enough to fill Triton's batches, few enough to bound memory.
DEFAULT_CONCURRENCY = 16

Message = TypeVar("Message")
Response = TypeVar("Response")


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


class StreamIncompleteError(RuntimeError):
    """A stream ended normally without a result for some images (a server fault)."""


class VisionClient:
    """Use as `async with VisionClient("127.0.0.1:4603") as client:`; share one per process.

    `timeout_s` is the deadline of a unary call, retries included; `stream_timeout_s` that of
    one stream (None: no deadline). TLS when `tls`, `root_certificates` (PEM) or a client
    certificate is given; mutual TLS presents `certificate_chain` (PEM, the client's certificate
    then its intermediates) with its `private_key` (PEM), both or neither. `api_key` travels as
    `authorization: Bearer <key>` on every call."""

    def __init__(
        self, target: str, timeout_s: float = DEFAULT_TIMEOUT_S, *,
        stream_timeout_s: float | None = None, retry: RetryPolicy | None = None,
        api_key: str | None = None, tls: bool = False, root_certificates: bytes | None = None,
        certificate_chain: bytes | None = None, private_key: bytes | None = None,
        channel_options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        if (certificate_chain is None) != (private_key is None):
            raise ValueError("certificate_chain and private_key go together (mutual TLS)")
        if tls or root_certificates is not None or certificate_chain is not None:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=root_certificates, private_key=private_key,
                certificate_chain=certificate_chain)
            self._channel = grpc.aio.secure_channel(target, credentials, channel_options)
        else:
            self._channel = grpc.aio.insecure_channel(target, channel_options)
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {api_key}"),) if api_key else ())
        self._detection = det_grpc.DetectionServiceStub(self._channel)
        self._embedding = embedding_service_pb2_grpc.EmbeddingServiceStub(self._channel)
        self._faces = face_service_pb2_grpc.FaceServiceStub(self._channel)
        self._ocr = ocr_service_pb2_grpc.OcrServiceStub(self._channel)
        self._analysis = analysis_service_pb2_grpc.AnalysisServiceStub(self._channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)
        self._ingest = ingest_service_pb2_grpc.IngestServiceStub(self._channel)
        self._search = search_service_pb2_grpc.SearchServiceStub(self._channel)
        self._people = people_service_pb2_grpc.PeopleServiceStub(self._channel)
        self._timeout_s = timeout_s
        self._stream_timeout_s = stream_timeout_s
        self._retry = retry or RetryPolicy()
        self._rng = random.Random()

    async def __aenter__(self) -> VisionClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def _unary(self, method: Callable[..., Awaitable[Response]], request: Any) -> Response:
        """One unary call under one deadline, retried per the policy; failures as VisionError.
        A failed attempt returned nothing, so a retry cannot duplicate a result."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout_s
        attempt = 1
        while True:
            try:
                return await method(request, timeout=max(deadline - loop.time(), 0.001),
                                    metadata=self._metadata)
            except grpc.aio.AioRpcError as err:
                error = vision_error(err)
                delay = self._retry.delay_s(error, attempt, self._rng)
                if delay is None or loop.time() + delay >= deadline:
                    raise error from None
            await asyncio.sleep(delay)
            attempt += 1

    async def detect(
        self, content: bytes, options: detection_pb2.DetectionOptions | None = None
    ) -> det_pb2.DetectObjectsResponse:
        """Detects objects in one image (up to 4 194 294 bytes, the 4 MiB message limit less
        framing; stream larger ones)."""
        return await self._unary(self._detection.DetectObjects, det_pb2.DetectObjectsRequest(
            image=image_pb2.Image(content=content), options=options))

    async def stream_detect(
        self, images: Iterable[StreamImage], chunk_bytes: int = DEFAULT_CHUNK_BYTES
    ) -> AsyncIterator[det_pb2.StreamDetectObjectsResponse]:
        """Uploads images over one stream; yields each result as it arrives (any order). No
        retries and no flow control: see `detect_many` for both."""
        call = self._detection.StreamDetectObjects(
            detection_uploads(images, chunk_bytes), timeout=self._stream_timeout_s,
            metadata=self._metadata)
        try:
            async for response in call:
                yield response
        except grpc.aio.AioRpcError as err:
            raise vision_error(err) from None

    async def detect_many(
        self, images: Iterable[StreamImage], concurrency: int = DEFAULT_CONCURRENCY,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ) -> AsyncIterator[det_pb2.StreamDetectObjectsResponse]:
        """Detects objects in any number of images over one stream with at most `concurrency`
        images awaiting their result; yields each image's result once, as it arrives. When the
        stream breaks (UNAVAILABLE: a restart, a lost connection) it reconnects with backoff and
        sends again only the images that have no result yet. An image's own failed status is
        its result (not retried)."""
        async for response in self._resumable(
                images, concurrency, lambda requests: self._detection.StreamDetectObjects(
                    requests, timeout=self._stream_timeout_s, metadata=self._metadata),
                lambda image: detection_uploads([image], chunk_bytes)):
            yield response

    async def _resumable(
        self, images: Iterable[StreamImage], concurrency: int,
        open_call: Callable[[AsyncIterator[Any]], Any],
        messages: Callable[[StreamImage], Iterable[Any]],
    ) -> AsyncIterator[Any]:
        """Any upload stream, windowed and resumed (see detect_many)."""
        pending: dict[str, StreamImage] = {}
        for image in images:
            if image.request_id in pending:
                raise ValueError(f"request_id {image.request_id!r} is used twice")
            pending[image.request_id] = image
        attempt = 1
        while pending:
            try:
                async for response in _windowed(open_call, list(pending.values()),
                                                concurrency, messages):
                    # An id already answered (or unknown) is dropped: never a duplicate.
                    if pending.pop(response.request_id, None) is not None:
                        attempt = 1
                        yield response
                if pending:
                    raise StreamIncompleteError(f"no result for {len(pending)} images")
            except grpc.aio.AioRpcError as err:
                error = vision_error(err)
                delay = self._retry.delay_s(error, attempt, self._rng, streaming=True)
                if delay is None:
                    raise error from None
                await asyncio.sleep(delay)
                attempt += 1

    async def embed(
        self, content: bytes, options: embedding_pb2.EmbeddingOptions | None = None
    ) -> embedding_service_pb2.EmbedImageResponse:
        """The image's embedding and its classes, best first."""
        request = embedding_service_pb2.EmbedImageRequest(
            image=image_pb2.Image(content=content), options=options)
        return await self._unary(self._embedding.EmbedImage, request)

    async def detect_faces(
        self, content: bytes, options: face_pb2.FaceOptions | None = None
    ) -> face_service_pb2.DetectFacesResponse:
        """The image's faces, landmarks and (with include_embeddings) identity embeddings."""
        return await self._unary(self._faces.DetectFaces, face_service_pb2.DetectFacesRequest(
            image=image_pb2.Image(content=content), options=options))

    async def extract_text(
        self, content: bytes, options: ocr_pb2.OcrOptions | None = None
    ) -> ocr_service_pb2.ExtractTextResponse:
        """The image's text lines in reading order."""
        return await self._unary(self._ocr.ExtractText, ocr_service_pb2.ExtractTextRequest(
            image=image_pb2.Image(content=content), options=options))

    async def analyze(
        self, content: bytes, options: analysis_pb2.AnalysisOptions
    ) -> analysis_service_pb2.AnalyzeImageResponse:
        """Any set of analyses of one image, each with its own status."""
        request = analysis_service_pb2.AnalyzeImageRequest(
            image=image_pb2.Image(content=content), options=options)
        return await self._unary(self._analysis.AnalyzeImage, request)

    async def stream_analyze(
        self, images: Iterable[AnalysisImage], chunk_bytes: int = DEFAULT_CHUNK_BYTES
    ) -> AsyncIterator[analysis_service_pb2.StreamAnalyzeImagesResponse]:
        """Uploads images over one stream; yields each image's analyses as they complete."""
        call = self._analysis.StreamAnalyzeImages(
            analysis_uploads(images, chunk_bytes), timeout=self._stream_timeout_s,
            metadata=self._metadata)
        try:
            async for response in call:
                yield response
        except grpc.aio.AioRpcError as err:
            raise vision_error(err) from None

    async def list_models(
        self, task: model_service_pb2.Task.ValueType = model_service_pb2.TASK_UNSPECIFIED
    ) -> list[model_service_pb2.Model]:
        """Every model the server serves (all pages), optionally of one task."""
        models: list[model_service_pb2.Model] = []
        token = ""
        while True:
            page = await self._unary(self._models.ListModels, model_service_pb2.ListModelsRequest(
                task=task, page_token=token))
            models.extend(page.models)
            token = page.next_page_token
            if not token:
                return models

    async def get_model(self, name: str, version: str = "") -> model_service_pb2.Model:
        response = await self._unary(self._models.GetModel, model_service_pb2.GetModelRequest(
            name=name, version=version))
        return response.model

    async def ingest(self, image_id: str, content: bytes,
                     metadata: dict[str, str] | None = None) -> ingest_pb2.IndexedImage:
        """Indexes one image under image_id (replacing what that id had); returns what was
        stored."""
        # Retrying is safe: an id's second ingest replaces its first.
        request = ingest_service_pb2.IngestImageRequest(
            options=ingest_pb2.IngestOptions(id=image_id, metadata=metadata or {}),
            image=image_pb2.Image(content=content))
        response = await self._unary(self._ingest.IngestImage, request)
        return response.image

    async def stream_ingest(
        self, images: Iterable[IngestImage], chunk_bytes: int = DEFAULT_CHUNK_BYTES
    ) -> AsyncIterator[ingest_service_pb2.StreamIngestImagesResponse]:
        """Indexes images over one stream; yields each image's outcome as it is stored."""
        call = self._ingest.StreamIngestImages(
            ingest_uploads(images, chunk_bytes), timeout=self._stream_timeout_s,
            metadata=self._metadata)
        try:
            async for response in call:
                yield response
        except grpc.aio.AioRpcError as err:
            raise vision_error(err) from None

    async def get_image(self, image_id: str) -> ingest_pb2.IndexedImage:
        response = await self._unary(self._ingest.GetImage,
                                     ingest_service_pb2.GetImageRequest(id=image_id))
        return response.image

    async def delete_image(self, image_id: str) -> None:
        await self._unary(self._ingest.DeleteImage,
                          ingest_service_pb2.DeleteImageRequest(id=image_id))

    async def search(self, request: search_service_pb2.SearchRequest
                     ) -> search_service_pb2.SearchResponse:
        """One page of hits; build the request with text=, image=, face_image=, vector= or
        similar_to_id= (optionally min_score=), or only filters= to browse newest first."""
        return await self._unary(self._search.Search, request)

    async def list_people(self) -> list[person_pb2.Person]:
        """Every person (all pages), most faces first."""
        people: list[person_pb2.Person] = []
        token = ""
        while True:
            page = await self._unary(self._people.ListPeople,
                                     people_service_pb2.ListPeopleRequest(page_token=token))
            people.extend(page.people)
            token = page.next_page_token
            if not token:
                return people

    async def get_person(self, person_id: str) -> person_pb2.Person:
        response = await self._unary(self._people.GetPerson,
                                     people_service_pb2.GetPersonRequest(id=person_id))
        return response.person

    async def rename_person(self, person_id: str, name: str) -> person_pb2.Person:
        response = await self._unary(self._people.UpdatePerson,
                                     people_service_pb2.UpdatePersonRequest(
                                         person=person_pb2.Person(id=person_id, name=name)))
        return response.person

    async def merge_people(self, person_ids: Sequence[str], target_id: str
                           ) -> person_pb2.Person:
        """Moves every face of person_ids to target_id; returns the target as merged."""
        response = await self._unary(self._people.MergePeople,
                                     people_service_pb2.MergePeopleRequest(
                                         person_ids=list(person_ids), target_id=target_id))
        return response.person

async def _windowed(
    open_call: Callable[[AsyncIterator[Any]], Any], images: list[StreamImage], concurrency: int,
    messages: Callable[[StreamImage], Iterable[Any]],
) -> AsyncIterator[Any]:
    """Runs one stream call, sending an image only while fewer than `concurrency` await their
    result, and yields the results as they are read. The requests go in as an iterator, not by
    `call.write`: a write into a broken connection fails locally with INTERNAL, which would hide
    the call's real status (UNAVAILABLE) that decides whether to reconnect."""
    slots = asyncio.Semaphore(concurrency)

    async def requests() -> AsyncIterator[Any]:
        for image in images:
            await slots.acquire()
            for message in messages(image):
                yield message

    call = open_call(requests())
    try:
        async for response in call:
            slots.release()
            yield response
    finally:
        call.cancel()
