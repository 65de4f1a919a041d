"""The one table from domain errors to `google.rpc.Status` (AIP-193): a code, a message safe to
show, ErrorInfo(reason, domain) and the detail each kind needs (BadRequest, ResourceInfo,
RetryInfo). Unknown exceptions become INTERNAL with a generic message and a logged traceback,
except in a call whose deadline has passed: its caller has already been told DEADLINE_EXCEEDED
by gRPC, so whatever failed is logged in one line and the call ends as DEADLINE_EXCEEDED.

Field paths: domain errors name fields relative to the pipeline's inputs (domain.Input); the
`RequestPaths` of the RPC at hand says where each input sits in its request, so the same error
reads `image.content` in a unary call and `chunk.data` in a stream.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, status_pb2
from google.rpc import error_details_pb2 as details_pb2
from grpc_status import rpc_status

from server import request_ids
from server.domain import (
    BackendError,
    BackendUnavailableError,
    DeadlineExceededError,
    FailedPreconditionError,
    FieldViolation,
    Input,
    InvalidArgumentError,
    ModelNotFoundError,
    NotFoundError,
    ResourceExhaustedError,
    StoreError,
    StoreUnavailableError,
    VisionError,
)

log = logging.getLogger(__name__)

DOMAIN = "vision.v1"
# An error travels in gRPC trailing metadata (8 KiB by default on most stacks), twice: the message
# as grpc-message and the whole Status base64-encoded in grpc-status-details-bin. These caps keep
# every error's Status near 2 KiB, so it is always delivered as documented.
MAX_VIOLATIONS = 10
MAX_DESCRIPTION = 120
MAX_IN_MESSAGE = 3


@dataclass(frozen=True, slots=True)
class RequestPaths:
    """Where a pipeline's inputs sit in one RPC's request, e.g. image → "image.content"."""

    image: str
    options: str

    def path(self, violation: FieldViolation) -> str:
        root = {Input.IMAGE: self.image, Input.OPTIONS: self.options, Input.REQUEST: ""}[
            violation.input]
        if not violation.path:
            return root
        if not root or violation.path.startswith("["):
            return root + violation.path
        return f"{root}.{violation.path}"


def to_status(exc: BaseException, paths: RequestPaths) -> status_pb2.Status:
    """The google.rpc.Status for an exception raised while serving one request or one image."""
    if isinstance(exc, InvalidArgumentError):
        shown = exc.violations[:MAX_VIOLATIONS]
        fields = [(paths.path(v), _clip(v.description)) for v in shown]
        message = "; ".join(f"{field}: {description}" if field else description
                            for field, description in fields[:MAX_IN_MESSAGE])
        if len(exc.violations) > MAX_IN_MESSAGE:
            message += f" (and {len(exc.violations) - MAX_IN_MESSAGE} more)"
        bad = details_pb2.BadRequest(field_violations=[
            details_pb2.BadRequest.FieldViolation(field=field, description=description)
            for field, description in fields
        ])
        return _status(code_pb2.INVALID_ARGUMENT, exc, bad, message=message)
    if isinstance(exc, ModelNotFoundError):
        return _not_found(exc, "model", exc.model.name,
                          paths.path(FieldViolation(Input.OPTIONS, exc.path, exc.message)))
    if isinstance(exc, NotFoundError):
        return _not_found(exc, exc.resource_type, exc.name,
                          paths.path(FieldViolation(Input.REQUEST, exc.path, exc.message)))
    if isinstance(exc, StoreUnavailableError):
        log.warning("store unavailable: %s", exc.detail)
        return _status(code_pb2.UNAVAILABLE, exc, _retry_info(exc.retry_after_s))
    if isinstance(exc, StoreError):
        log.error("store error: %s", exc.detail)
        return _status(code_pb2.INTERNAL, exc)
    if isinstance(exc, BackendUnavailableError):
        return _status(code_pb2.UNAVAILABLE, exc, _retry_info(exc.retry_after_s))
    if isinstance(exc, ResourceExhaustedError):
        return _status(code_pb2.RESOURCE_EXHAUSTED, exc, _retry_info(exc.retry_after_s))
    if isinstance(exc, FailedPreconditionError):
        return _status(code_pb2.FAILED_PRECONDITION, exc)
    if isinstance(exc, DeadlineExceededError):
        return _status(code_pb2.DEADLINE_EXCEEDED, exc)
    if isinstance(exc, BackendError):
        log.error("backend error: %s", exc.detail)
        return _status(code_pb2.INTERNAL, exc)
    log.error("unhandled error", exc_info=exc)
    return status_pb2.Status(code=code_pb2.INTERNAL, message="internal error")


def _not_found(exc: VisionError, resource_type: str, name: str,
               field: str) -> status_pb2.Status:
    """NOT_FOUND with the resource that is missing and the field that named it."""
    resource = details_pb2.ResourceInfo(
        resource_type=resource_type, resource_name=_clip(name), description=exc.message)
    bad = details_pb2.BadRequest(field_violations=[
        details_pb2.BadRequest.FieldViolation(field=field, description=exc.message)])
    return _status(code_pb2.NOT_FOUND, exc, resource, bad)


def _clip(text: str) -> str:
    return text if len(text) <= MAX_DESCRIPTION else text[:MAX_DESCRIPTION] + "…"


def _retry_info(after_s: float) -> details_pb2.RetryInfo:
    seconds = int(after_s)
    return details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(
        seconds=seconds, nanos=int((after_s - seconds) * 1e9)))


def _status(
    code: int, exc: VisionError, *details: Message, message: str | None = None
) -> status_pb2.Status:
    info = details_pb2.ErrorInfo(reason=exc.reason, domain=DOMAIN)
    packed = []
    for detail in (info, *details):
        any_detail = any_pb2.Any()
        any_detail.Pack(detail)
        packed.append(any_detail)
    return status_pb2.Status(code=code, message=message or exc.message, details=packed)


Servicer = TypeVar("Servicer")
Request = TypeVar("Request")
Response = TypeVar("Response")
Context = grpc.aio.ServicerContext[Any, Any]


async def abort(context: grpc.aio.ServicerContext[Any, Any],
                status: status_pb2.Status) -> NoReturn:
    """Ends the call with status, its details in the trailing metadata beside the call's request
    id (server.request_ids; none before the id is read)."""
    ending = rpc_status.to_status(status)
    await context.abort(ending.code, ending.details,
                        (*ending.trailing_metadata, *request_ids.trailer()))
    raise AssertionError("abort returned")  # grpc's abort always raises


def unary(
    paths: RequestPaths | Callable[[Any], RequestPaths],
) -> Callable[
    [Callable[[Servicer, Request, Context], Awaitable[Response]]],
    Callable[[Servicer, Request, Context], Awaitable[Response]],
]:
    """Decorates a unary RPC method: whatever it raises ends the call with the status from the
    table above, its field paths placed by `paths` (or by `paths(request)` when where an input
    sits depends on the request, as with a oneof)."""

    def decorate(
        method: Callable[[Servicer, Request, Context], Awaitable[Response]],
    ) -> Callable[[Servicer, Request, Context], Awaitable[Response]]:
        @functools.wraps(method)
        async def handled(self: Servicer, request: Request, context: Context) -> Response:
            try:
                return await method(self, request, context)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:  # noqa: BLE001 (every error becomes a status)
                if past_deadline(context):
                    await end_after_deadline(context, method.__name__, exc)
                placed = paths if isinstance(paths, RequestPaths) else paths(request)
                await abort(context, to_status(exc, placed))

        return handled

    return decorate


def past_deadline(context: Context) -> bool:
    """The call had a deadline and it has passed (gRPC reports the time left as 0 then)."""
    remaining = context.time_remaining()
    return remaining is not None and remaining <= 0


async def end_after_deadline(context: Context, what: str, exc: BaseException) -> NoReturn:
    """Ends a call whose deadline passed while `what` failed with exc: one log line, no
    traceback (the failure is the deadline's doing, and the caller already has its status).
    When gRPC has already finished the call and refuses the status, the call ends as
    cancelled, which gRPC does not log either."""
    if not isinstance(exc, DeadlineExceededError):  # that one is the deadline itself
        log.warning("%s failed after its deadline had passed: %s", what,
                    exc.message if isinstance(exc, VisionError) else type(exc).__name__)
    error = DeadlineExceededError()
    try:
        await context.abort_with_status(rpc_status.to_status(_status(code_pb2.DEADLINE_EXCEEDED,
                                                                     error)))
    except grpc.aio.AbortError:
        raise
    except Exception:  # noqa: BLE001 (the call is over; nothing is left to tell anyone)
        pass
    raise asyncio.CancelledError
