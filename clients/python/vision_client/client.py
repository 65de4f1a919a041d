"""An asyncio client for vision-grpc: one channel reused for every call, unary detection, and the
chunked upload stream (upload.proto) for many or large images."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import TypeVar

import grpc

from vision.v1 import detection_pb2, image_pb2, upload_pb2
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


class VisionClient:
    """Use as `async with VisionClient("127.0.0.1:4603") as client:`; share one per process."""

    def __init__(self, target: str, timeout_s: float = 30.0) -> None:
        self._channel = grpc.aio.insecure_channel(target)
        self._detection = det_grpc.DetectionServiceStub(self._channel)
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
