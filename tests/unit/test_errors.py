"""The error table: each domain error's code, message and decoded details."""

from __future__ import annotations

from google.rpc import code_pb2, error_details_pb2, status_pb2

from server.domain import (
    BackendError,
    BackendUnavailableError,
    DeadlineExceededError,
    FieldViolation,
    InvalidArgumentError,
    ModelNotFoundError,
    ModelRef,
)
from server.errors import DOMAIN, to_status


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
        FieldViolation("options.iou_threshold", "must be in [0, 1]"),
        FieldViolation("options.max_detections", "too many"),
    ))
    status = to_status(exc)
    assert status.code == code_pb2.INVALID_ARGUMENT
    found = details(status)
    info = found["ErrorInfo"]
    assert isinstance(info, error_details_pb2.ErrorInfo)
    assert (info.reason, info.domain) == ("INVALID_OPTION", DOMAIN)
    bad = found["BadRequest"]
    assert isinstance(bad, error_details_pb2.BadRequest)
    assert [v.field for v in bad.field_violations] == [
        "options.iou_threshold", "options.max_detections"]


def test_field_renames_apply_by_prefix() -> None:
    exc = InvalidArgumentError("X", (FieldViolation("image.content", "bad"),
                                     FieldViolation("options.class_allowlist[2]", "empty")))
    bad = details(to_status(exc, {"image.content": "chunk.data", "options": "header.options"}))
    assert isinstance(bad["BadRequest"], error_details_pb2.BadRequest)
    assert [v.field for v in bad["BadRequest"].field_violations] == [
        "chunk.data", "header.options.class_allowlist[2]"]


def test_model_not_found() -> None:
    status = to_status(ModelNotFoundError(ModelRef("nope", "3"), "options.model.version"))
    assert status.code == code_pb2.NOT_FOUND
    found = details(status)
    resource = found["ResourceInfo"]
    assert isinstance(resource, error_details_pb2.ResourceInfo)
    assert (resource.resource_type, resource.resource_name) == ("model", "nope")
    bad = found["BadRequest"]
    assert isinstance(bad, error_details_pb2.BadRequest)
    assert bad.field_violations[0].field == "options.model.version"


def test_unavailable_has_retry_info() -> None:
    status = to_status(BackendUnavailableError(retry_after_s=1.5))
    assert status.code == code_pb2.UNAVAILABLE
    retry = details(status)["RetryInfo"]
    assert isinstance(retry, error_details_pb2.RetryInfo)
    assert (retry.retry_delay.seconds, retry.retry_delay.nanos) == (1, 500_000_000)


def test_internal_errors_never_leak_their_text() -> None:
    assert to_status(DeadlineExceededError()).code == code_pb2.DEADLINE_EXCEEDED
    backend = to_status(BackendError("StatusCode.INTERNAL: secret stack trace"))
    assert backend.code == code_pb2.INTERNAL and "secret" not in backend.message
    unknown = to_status(RuntimeError("password=hunter2"))
    assert (unknown.code, unknown.message) == (code_pb2.INTERNAL, "internal error")
