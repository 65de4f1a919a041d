"""Python SDK for vision-grpc: an asyncio client (and a blocking wrapper) over the generated
vision.v1 stubs, with deadlines, retries and typed errors."""

from vision_client.client import (
    DEFAULT_CHUNK_BYTES,
    DEFAULT_CONCURRENCY,
    DEFAULT_TIMEOUT_S,
    AnalysisImage,
    IngestImage,
    StreamImage,
    StreamIncompleteError,
    VisionClient,
    analysis_uploads,
    detection_uploads,
    ingest_uploads,
    upload_messages,
)
from vision_client.errors import (
    DeadlineExceededError,
    FieldViolation,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    StatusDetails,
    UnauthenticatedError,
    UnavailableError,
    VisionError,
    describe_status,
    vision_error,
)
from vision_client.retry import NO_RETRY, RetryPolicy
from vision_client.sync import SyncVisionClient

__all__ = [
    "DEFAULT_CHUNK_BYTES", "DEFAULT_CONCURRENCY", "DEFAULT_TIMEOUT_S", "NO_RETRY",
    "AnalysisImage", "DeadlineExceededError", "FieldViolation", "IngestImage",
    "InvalidArgumentError", "NotFoundError", "ResourceExhaustedError", "RetryPolicy",
    "StatusDetails", "StreamImage", "StreamIncompleteError", "SyncVisionClient",
    "UnauthenticatedError", "UnavailableError", "VisionClient", "VisionError",
    "analysis_uploads", "describe_status", "detection_uploads", "ingest_uploads",
    "upload_messages", "vision_error",
]
