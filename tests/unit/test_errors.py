"""The error table: each domain error's code, message and decoded details."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2

from server.domain import (
    BackendError,
    BackendUnavailableError,
    DeadlineExceededError,
    FieldViolation,
    Input,
    InvalidArgumentError,
    ModelNotFoundError,
    ModelRef,
    ResourceExhaustedError,
)
from server.errors import DOMAIN, MAX_VIOLATIONS, RequestPaths, to_status, unary

UNARY = RequestPaths(image="image.content", options="options")
STREAM = RequestPaths(image="chunk.data", options="header.detection")


def details(status: status_pb2.Status) -> dict[str, object]:
    found: dict[str, object] = {}
    for any_detail in status.details:
        for kind in (error_details_pb2.ErrorInfo, error_details_pb2.BadRequest,
                     error_details_pb2.ResourceInfo, error_details_pb2.RetryInfo):
            if any_detail.Is(kind.DESCRIPTOR):
                message = kind()
                any_detail.Unpack(message)
                found[kind.__name__] = message
    return found


def test_invalid_argument_carries_every_violation() -> None:
    exc = InvalidArgumentError("INVALID_OPTION", (
        FieldViolation(Input.OPTIONS, "iou_threshold", "must be in [0, 1]"),
        FieldViolation(Input.OPTIONS, "max_detections", "too many"),
    ))
    status = to_status(exc, UNARY)
    assert status.code == code_pb2.INVALID_ARGUMENT
    found = details(status)
    info = found["ErrorInfo"]
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert (info.reason, info.domain) == ("INVALID_OPTION", DOMAIN)
    bad = found["BadRequest"]
    assert isinstance(bad, error_details_pb2.BadRequest)
    assert [v.field for v in bad.field_violations] == [
        "options.iou_threshold", "options.max_detections"]
    assert status.message == (
        "options.iou_threshold: must be in [0, 1]; options.max_detections: too many")


def test_paths_are_placed_by_the_request_shape_in_details_and_message() -> None:
    exc = InvalidArgumentError("X", (FieldViolation(Input.IMAGE, "", "bad"),
                                     FieldViolation(Input.OPTIONS, "class_allowlist[2]", "empty"),
                                     FieldViolation(Input.REQUEST, "header.size_bytes", "big")))
    status = to_status(exc, STREAM)
    bad = details(status)
    assert isinstance(bad["BadRequest"], error_details_pb2.BadRequest)
    assert [v.field for v in bad["BadRequest"].field_violations] == [
        "chunk.data", "header.detection.class_allowlist[2]", "header.size_bytes"]
    assert "image.content" not in status.message and "chunk.data: bad" in status.message


def test_violations_and_echoed_values_are_capped_so_errors_stay_deliverable() -> None:
    many = tuple(FieldViolation(Input.OPTIONS, f"class_allowlist[{i}]", "x" * 1000)
                 for i in range(100))
    status = to_status(InvalidArgumentError("INVALID_OPTION", many), UNARY)
    bad = details(status)["BadRequest"]
    assert isinstance(bad, error_details_pb2.BadRequest)
    assert len(bad.field_violations) == MAX_VIOLATIONS
    assert "(and 97 more)" in status.message
    assert status.ByteSize() < 2500
    huge = to_status(ModelNotFoundError(ModelRef("m" * 2000), "model.name"), UNARY)
    assert huge.ByteSize() < 1024


def test_model_not_found() -> None:
    status = to_status(ModelNotFoundError(ModelRef("nope", "3"), "model.version"), UNARY)
    assert status.code == code_pb2.NOT_FOUND
    found = details(status)
    resource = found["ResourceInfo"]
    assert isinstance(resource, error_details_pb2.ResourceInfo)
    assert (resource.resource_type, resource.resource_name) == ("model", "nope")
    bad = found["BadRequest"]
    assert isinstance(bad, error_details_pb2.BadRequest)
    assert bad.field_violations[0].field == "options.model.version"


def test_unavailable_has_retry_info() -> None:
    status = to_status(BackendUnavailableError(retry_after_s=1.5), UNARY)
    assert status.code == code_pb2.UNAVAILABLE
    retry = details(status)["RetryInfo"]
    assert isinstance(retry, error_details_pb2.RetryInfo)
    assert (retry.retry_delay.seconds, retry.retry_delay.nanos) == (1, 500_000_000)


def test_resource_exhausted_has_reason_and_retry_info() -> None:
    status = to_status(ResourceExhaustedError("OVERLOADED", retry_after_s=0.25), UNARY)
    assert status.code == code_pb2.RESOURCE_EXHAUSTED
    found = details(status)
    info, retry = found["ErrorInfo"], found["RetryInfo"]
    assert isinstance(info, error_details_pb2.ErrorInfo) and info.reason == "OVERLOADED"
    assert isinstance(retry, error_details_pb2.RetryInfo)
    assert (retry.retry_delay.seconds, retry.retry_delay.nanos) == (0, 250_000_000)


def test_internal_errors_never_leak_their_text() -> None:
    assert to_status(DeadlineExceededError(), UNARY).code == code_pb2.DEADLINE_EXCEEDED
    backend = to_status(BackendError("StatusCode.INTERNAL: secret stack trace"), UNARY)
    assert backend.code == code_pb2.INTERNAL and "secret" not in backend.message
    unknown = to_status(RuntimeError("password=hunter2"), UNARY)
    assert (unknown.code, unknown.message) == (code_pb2.INTERNAL, "internal error")


class Aborted(Exception):
    pass


class PastDeadlineContext:
    """A call whose deadline has passed; `finished`: gRPC has already ended it and refuses a
    status (as grpc.aio does with UsageError once the RPC is over)."""

    def __init__(self, finished: bool = False) -> None:
        self.finished = finished
        self.status: status_pb2.Status | None = None

    def time_remaining(self) -> float:
        return 0.0

    async def abort_with_status(self, status: Any) -> None:
        if self.finished:
            raise grpc.aio.UsageError("RPC already finished.")
        self.status = status_pb2.Status.FromString(
            dict(status.trailing_metadata)["grpc-status-details-bin"])
        raise grpc.aio.AbortError


class Servicer:
    def __init__(self, error: Exception) -> None:
        self.error = error

    @unary(RequestPaths(image="image.content", options="options"))
    async def Detect(self, request: object, context: Any) -> None:  # noqa: N802
        raise self.error


@pytest.mark.parametrize("error", [RuntimeError("socket closed"), BackendUnavailableError()])
async def test_a_failure_after_the_deadline_is_logged_in_one_line(
    error: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    context = PastDeadlineContext()
    with caplog.at_level(logging.INFO, logger="server.errors"), \
            pytest.raises(grpc.aio.AbortError):
        await Servicer(error).Detect(object(), context)  # type: ignore[arg-type]
    assert context.status is not None and context.status.code == code_pb2.DEADLINE_EXCEEDED
    assert [(r.levelname, r.exc_info) for r in caplog.records] == [("WARNING", None)]
    assert caplog.records[0].getMessage().startswith(
        "Detect failed after its deadline had passed: ")
    assert "\n" not in caplog.text.strip()


async def test_a_call_grpc_already_ended_ends_as_cancelled_without_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="server.errors"), \
            pytest.raises(asyncio.CancelledError):
        await Servicer(DeadlineExceededError()).Detect(
            object(), PastDeadlineContext(True))  # type: ignore[arg-type]
    assert caplog.records == []  # the deadline itself is no news
