"""The one table from domain errors to `google.rpc.Status` (AIP-193): a code, a message safe to
show, ErrorInfo(reason, domain) and the detail each kind needs (BadRequest, ResourceInfo,
RetryInfo). Unknown exceptions become INTERNAL with a generic message and a logged traceback."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, status_pb2
from google.rpc import error_details_pb2 as details_pb2
from grpc_status import rpc_status

from server.domain import (
    BackendError,
    BackendUnavailableError,
    DeadlineExceededError,
    InvalidArgumentError,
    ModelNotFoundError,
    VisionError,
)

log = logging.getLogger(__name__)

DOMAIN = "vision.v1"


def to_status(exc: BaseException, renames: Mapping[str, str] | None = None) -> status_pb2.Status:
    """The google.rpc.Status for an exception raised while serving one request or one image.

    `renames` maps field-path prefixes to the names a differently shaped request uses (a
    streamed image's `image.content` is its `chunk.data`)."""
    def field(path: str) -> str:
        return rename_field(path, renames or {})

    if isinstance(exc, InvalidArgumentError):
        bad = details_pb2.BadRequest(field_violations=[
            details_pb2.BadRequest.FieldViolation(field=field(v.field), description=v.description)
            for v in exc.violations
        ])
        return _status(code_pb2.INVALID_ARGUMENT, exc, bad)
    if isinstance(exc, ModelNotFoundError):
        resource = details_pb2.ResourceInfo(
            resource_type="model", resource_name=exc.model.name, description=exc.message
        )
        bad = details_pb2.BadRequest(field_violations=[
            details_pb2.BadRequest.FieldViolation(field=field(exc.field), description=exc.message)
        ])
        return _status(code_pb2.NOT_FOUND, exc, resource, bad)
    if isinstance(exc, BackendUnavailableError):
        retry = details_pb2.RetryInfo(
            retry_delay=duration_pb2.Duration(nanos=int(exc.retry_after_s * 1e9) % 10**9,
                                              seconds=int(exc.retry_after_s))
        )
        return _status(code_pb2.UNAVAILABLE, exc, retry)
    if isinstance(exc, DeadlineExceededError):
        return _status(code_pb2.DEADLINE_EXCEEDED, exc)
    if isinstance(exc, BackendError):
        log.error("backend error: %s", exc.detail)
        return _status(code_pb2.INTERNAL, exc)
    log.error("unhandled error", exc_info=exc)
    return status_pb2.Status(code=code_pb2.INTERNAL, message="internal error")


def rename_field(path: str, renames: Mapping[str, str]) -> str:
    for old, new in renames.items():
        if path == old or path.startswith(old + ".") or path.startswith(old + "["):
            return new + path[len(old):]
    return path


def _status(code: int, exc: VisionError, *details: Message) -> status_pb2.Status:
    info = details_pb2.ErrorInfo(reason=exc.reason, domain=DOMAIN)
    packed = []
    for detail in (info, *details):
        any_detail = any_pb2.Any()
        any_detail.Pack(detail)
        packed.append(any_detail)
    return status_pb2.Status(code=code, message=exc.message, details=packed)


async def abort(context: grpc.aio.ServicerContext[object, object], exc: BaseException) -> None:
    """Ends the call with the rich status for exc (raises, as context.abort does)."""
    await context.abort_with_status(rpc_status.to_status(to_status(exc)))
