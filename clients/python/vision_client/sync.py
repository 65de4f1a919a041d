"""A blocking client for scripts and notebooks without asyncio: the async VisionClient run on a
private event loop, so it keeps one channel, the deadlines, retries and typed errors."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from types import TracebackType
from typing import Any

from vision.v1 import (
    detection_pb2,
    embedding_pb2,
    embedding_service_pb2,
    face_pb2,
    face_service_pb2,
    model_service_pb2,
    ocr_pb2,
    ocr_service_pb2,
)
from vision.v1 import detection_service_pb2 as det_pb2
from vision_client.client import DEFAULT_CONCURRENCY, StreamImage, VisionClient


class SyncVisionClient:
    """`with SyncVisionClient("127.0.0.1:4603") as client: client.detect(data)`; takes the
    keyword arguments of VisionClient. Not for use from inside a running event loop."""

    def __init__(self, target: str, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        # The aio channel binds to the loop it is created on: create it on ours.
        self._client = self._loop.run_until_complete(_create(target, options))

    def __enter__(self) -> SyncVisionClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if not self._loop.is_closed():
            self._loop.run_until_complete(self._client.close())
            self._loop.close()

    def detect(self, content: bytes, options: detection_pb2.DetectionOptions | None = None
               ) -> det_pb2.DetectObjectsResponse:
        return self._loop.run_until_complete(self._client.detect(content, options))

    def detect_many(self, images: Iterable[StreamImage],
                    concurrency: int = DEFAULT_CONCURRENCY
                    ) -> list[det_pb2.StreamDetectObjectsResponse]:
        """Every image's result (in arrival order), over one resumable stream."""
        async def collect() -> list[det_pb2.StreamDetectObjectsResponse]:
            return [r async for r in self._client.detect_many(images, concurrency)]
        return self._loop.run_until_complete(collect())

    def embed(self, content: bytes, options: embedding_pb2.EmbeddingOptions | None = None
              ) -> embedding_service_pb2.EmbedImageResponse:
        return self._loop.run_until_complete(self._client.embed(content, options))

    def detect_faces(self, content: bytes, options: face_pb2.FaceOptions | None = None
                     ) -> face_service_pb2.DetectFacesResponse:
        return self._loop.run_until_complete(self._client.detect_faces(content, options))

    def extract_text(self, content: bytes, options: ocr_pb2.OcrOptions | None = None
                     ) -> ocr_service_pb2.ExtractTextResponse:
        return self._loop.run_until_complete(self._client.extract_text(content, options))

    def list_models(self) -> list[model_service_pb2.Model]:
        return self._loop.run_until_complete(self._client.list_models())


async def _create(target: str, options: dict[str, Any]) -> VisionClient:
    return VisionClient(target, **options)
