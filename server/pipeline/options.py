"""Checks shared by every task's options: how a caller may name a model, and value ranges.
Each function reports problems as field violations relative to the task's options, so that one
call can report all of them at once."""

from __future__ import annotations

import re
from dataclasses import dataclass

from server.domain import FieldViolation, Input, ModelNotFoundError, ModelRef

# Triton numbers versions with int64; ASCII digits only (str.isdigit also accepts "²" and "١").
_VERSION = re.compile(r"[0-9]{1,18}")


@dataclass(frozen=True, slots=True)
class ModelChoice:
    """The models one task may use: callers pick among `allowed`, or get `default`."""

    allowed: frozenset[str]
    default: str

    def resolve(self, given: ModelRef) -> ModelRef:
        """The model to run; NOT_FOUND for a name the task does not serve."""
        model = ModelRef(given.name or self.default, given.version)
        if model.name not in self.allowed:
            raise ModelNotFoundError(model, "model.name")
        return model


def check_version(model: ModelRef) -> list[FieldViolation]:
    """A pinned version must be a plain version number; empty means the newest ready one."""
    if not model.version or _VERSION.fullmatch(model.version):
        return []
    return [FieldViolation(
        Input.OPTIONS, "model.version",
        'must be a version number of at most 18 ASCII digits such as "1", or empty')]


def unit_interval(
    value: float | None, default: float, field: str, violations: list[FieldViolation]
) -> float:
    """value, or default when unset; a violation unless it lies in [0, 1] (NaN does not)."""
    if value is None:
        return default
    if not 0.0 <= value <= 1.0:
        violations.append(FieldViolation(Input.OPTIONS, field, "must be in [0, 1]"))
    return value


def count(value: int, default: int, maximum: int, field: str,
          violations: list[FieldViolation]) -> int:
    """A count in [0, maximum] where 0 means default."""
    if not 0 <= value <= maximum:
        violations.append(FieldViolation(
            Input.OPTIONS, field, f"must be in [0, {maximum}] (0 = default)"))
    return value or default
