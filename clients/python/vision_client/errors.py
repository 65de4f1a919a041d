"""Typed errors of the SDK: a failed call's google.rpc.Status decoded once (reason, field
violations, retry delay, resource), as one exception class per status code. Each is still a
`grpc.aio.AioRpcError`, so code written against plain gRPC keeps working."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


@dataclass(frozen=True)
class StatusDetails:
    """What a google.rpc.Status says: a failed call's, or one streamed item's."""

    code: grpc.StatusCode
    message: str
    reason: str = ""
    domain: str = ""
    field_violations: tuple[FieldViolation, ...] = ()
    retry_delay_s: float | None = None
    resource_type: str = ""
    resource_name: str = ""
    metadata: dict[str, str] = field(default_factory=dict)


_CODES = {code.value[0]: code for code in grpc.StatusCode}


def describe_status(status: status_pb2.Status) -> StatusDetails:
    """Decodes the details this service sends (ErrorInfo, BadRequest, RetryInfo, ResourceInfo)."""
    reason = domain = resource_type = resource_name = ""
    violations: list[FieldViolation] = []
    retry_delay_s: float | None = None
    metadata: dict[str, str] = {}
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, domain, metadata = info.reason, info.domain, dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations.extend(FieldViolation(v.field, v.description)
                              for v in bad.field_violations)
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            retry_delay_s = retry.retry_delay.ToTimedelta().total_seconds()
        elif detail.Is(error_details_pb2.ResourceInfo.DESCRIPTOR):
            resource = error_details_pb2.ResourceInfo()
            detail.Unpack(resource)
            resource_type, resource_name = resource.resource_type, resource.resource_name
    return StatusDetails(
        code=_CODES.get(status.code, grpc.StatusCode.UNKNOWN), message=status.message,
        reason=reason, domain=domain, field_violations=tuple(violations),
        retry_delay_s=retry_delay_s, resource_type=resource_type, resource_name=resource_name,
        metadata=metadata)


class VisionError(grpc.aio.AioRpcError):
    """A failed call, with its status details decoded (`.status`)."""

    def __init__(self, error: grpc.aio.AioRpcError, status: StatusDetails) -> None:
        super().__init__(error.code(), error.initial_metadata(), error.trailing_metadata(),
                         error.details(), error.debug_error_string())
        self.status = status

    @property
    def reason(self) -> str:
        return self.status.reason

    @property
    def field_violations(self) -> tuple[FieldViolation, ...]:
        return self.status.field_violations

    @property
    def retry_delay_s(self) -> float | None:
        return self.status.retry_delay_s


class InvalidArgumentError(VisionError):
    """The request was wrong (bad image, bad option): fix it, don't retry."""


class NotFoundError(VisionError):
    """An unknown model or version (`status.resource_name`)."""


class ResourceExhaustedError(VisionError):
    """The server is saturated or a message is over 4 MiB; retried when it says when."""


class UnavailableError(VisionError):
    """The server or its backend is unreachable for now; retried."""


class DeadlineExceededError(VisionError):
    """The call's deadline passed."""


class UnauthenticatedError(VisionError):
    """Missing or wrong API key."""


_CLASSES: dict[grpc.StatusCode, type[VisionError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
}


def vision_error(error: grpc.aio.AioRpcError) -> VisionError:
    """The typed error for a failed call; details come from `grpc-status-details-bin`."""
    if isinstance(error, VisionError):
        return error
    status = rpc_status.from_call(error)
    details = (describe_status(status) if status is not None
               else StatusDetails(code=error.code(), message=error.details() or ""))
    return _CLASSES.get(error.code(), VisionError)(error, details)
