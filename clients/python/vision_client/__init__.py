"""Python SDK for vision-grpc: an asyncio client over the generated vision.v1 stubs."""

from clients.python.vision_client.client import (
    DEFAULT_CHUNK_BYTES,
    StreamImage,
    VisionClient,
    upload_messages,
)

__all__ = ["DEFAULT_CHUNK_BYTES", "StreamImage", "VisionClient", "upload_messages"]
