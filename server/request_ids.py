"""Request ids: read once per call from the `x-request-id` metadata (or made up), validated,
kept in a context variable for logs and for the call to Triton, and returned to the caller."""

from __future__ import annotations

import contextvars
import logging
import random
import re

METADATA_KEY = "x-request-id"
MAX_LENGTH = 128
# Printable ASCII without spaces: safe in logs, metadata and Triton's request id alike.
_VALID = re.compile(rf"[\x21-\x7e]{{1,{MAX_LENGTH}}}")

_NONE = "-"
_current: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default=_NONE)


def is_valid(request_id: str) -> bool:
    return _VALID.fullmatch(request_id) is not None


def new() -> str:
    """128 random bits as 32 hex digits, the shape of a uuid4's hex. The id correlates logs and is
    no secret, so the interpreter's generator (seeded from the OS in each process) serves at a
    sixth of uuid4's cost, which reads the OS's random source on every call."""
    return f"{random.getrandbits(128):032x}"


def trailer() -> tuple[tuple[str, str], ...]:
    """The call's id as response metadata; empty outside a call or before the id is read."""
    request_id = _current.get()
    return () if request_id == _NONE else ((METADATA_KEY, request_id),)


def current() -> str:
    """The id of the call being served ("-" outside a call)."""
    return _current.get()


def bind(request_id: str) -> contextvars.Token[str]:
    return _current.set(request_id)


def unbind(token: contextvars.Token[str]) -> None:
    _current.reset(token)


class LogFilter(logging.Filter):
    """Adds `request_id` to every log record, so formats can print it."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = _current.get()
        return True
