"""What one call cost, gathered while it runs: the outermost observing interceptor opens a record,
inner layers fill it in (the auth interceptor its tenant, the Triton call path its inference
time), and at the end it becomes the access-log line, the metrics and the timing trailer."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass

from server.tenants import DEFAULT_TENANT


@dataclass(slots=True)
class CallRecord:
    tenant: str = DEFAULT_TENANT
    request_bytes: int = 0
    inference_s: float = 0.0
    inference_calls: int = 0


_current: contextvars.ContextVar[CallRecord | None] = contextvars.ContextVar(
    "call_record", default=None)


def open_record() -> tuple[CallRecord, contextvars.Token[CallRecord | None]]:
    record = CallRecord()
    return record, _current.set(record)


def close_record(token: contextvars.Token[CallRecord | None]) -> None:
    _current.reset(token)


def note_tenant(tenant: str) -> None:
    record = _current.get()
    if record is not None:
        record.tenant = tenant


def add_inference(seconds: float) -> None:
    """Adds one Triton call's duration to the call being served (none outside a call)."""
    record = _current.get()
    if record is not None:
        record.inference_s += seconds
        record.inference_calls += 1
