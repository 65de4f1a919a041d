"""Python SDK for vision-grpc: an asyncio client over the generated vision.v1 stubs."""

from vision_client.client import (
    DEFAULT_CHUNK_BYTES,
    AnalysisImage,
    IngestImage,
    StreamImage,
    VisionClient,
    analysis_uploads,
    detection_uploads,
    ingest_uploads,
    upload_messages,
)

__all__ = [
    "DEFAULT_CHUNK_BYTES", "AnalysisImage", "IngestImage", "StreamImage", "VisionClient",
    "analysis_uploads", "detection_uploads", "ingest_uploads", "upload_messages",
]
