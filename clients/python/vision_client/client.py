"""An asyncio client for vision-grpc: one channel reused for every call, unary detection, and the
chunked upload stream for many or large images."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from types import TracebackType

import grpc

from vision.v1 import detection_service_pb2 as det_pb2
from vision.v1 import detection_service_pb2_grpc as det_grpc
from vision.v1 import image_pb2

# 1 MiB chunks: well under gRPC's 4 MiB message limit, few enough messages for large images.
DEFAULT_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class StreamImage:
    """One image to send over StreamDetect."""

    request_id: str
    content: bytes
    options: det_pb2.DetectionOptions = field(default_factory=det_pb2.DetectionOptions)


def upload_messages(
    images: Iterable[StreamImage], chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> Iterator[det_pb2.StreamDetectRequest]:
    """The StreamDetect messages for images: per image a header, its chunks, an end marker."""
    for image in images:
        yield det_pb2.StreamDetectRequest(header=det_pb2.UploadHeader(
            request_id=image.request_id, options=image.options, size_bytes=len(image.content)))
        for start in range(0, len(image.content), chunk_bytes):
            yield det_pb2.StreamDetectRequest(
                chunk=det_pb2.ImageChunk(data=image.content[start:start + chunk_bytes]))
        yield det_pb2.StreamDetectRequest(end=det_pb2.UploadEnd())


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
        self, content: bytes, options: det_pb2.DetectionOptions | None = None
    ) -> det_pb2.DetectResponse:
        """Detects objects in one image (up to gRPC's 4 MiB message limit; else stream it)."""
        request = det_pb2.DetectRequest(image=image_pb2.Image(content=content), options=options)
        response: det_pb2.DetectResponse = await self._detection.Detect(
            request, timeout=self._timeout_s)
        return response

    async def stream_detect(
        self, images: Iterable[StreamImage], chunk_bytes: int = DEFAULT_CHUNK_BYTES
    ) -> AsyncIterator[det_pb2.StreamDetectResponse]:
        """Uploads images over one stream; yields each result as it arrives (any order)."""
        call = self._detection.StreamDetect(
            upload_messages(images, chunk_bytes), timeout=self._timeout_s)
        async for response in call:
            yield response
