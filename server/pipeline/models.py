"""Checks shared by every task's options: how a caller may name a model."""

from __future__ import annotations

import re

from server.domain import FieldViolation, Input, ModelRef

# Triton numbers versions with int64; ASCII digits only (str.isdigit also accepts "²" and "١").
_VERSION = re.compile(r"[0-9]{1,18}")


def check_version(model: ModelRef) -> list[FieldViolation]:
    """A pinned version must be a plain version number; empty means the newest ready one."""
    if not model.version or _VERSION.fullmatch(model.version):
        return []
    return [FieldViolation(
        Input.OPTIONS, "model.version",
        'must be a version number of at most 18 ASCII digits such as "1", or empty')]
