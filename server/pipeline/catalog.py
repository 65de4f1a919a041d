"""The model catalogue callers see: Triton's task-tagged models that this server lets callers
name, each marked with whether it is its task's default; listed in pages (AIP-158)."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from server.domain import (
    FieldViolation,
    Input,
    InvalidArgumentError,
    ModelInfo,
    ModelNotFoundError,
    ModelRef,
    Task,
)
from server.pipeline.options import ModelChoice, check_version

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


class Catalog(Protocol):
    async def models(self) -> list[ModelInfo]: ...


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    info: ModelInfo
    default_for_task: bool


@dataclass(frozen=True, slots=True)
class CatalogPage:
    entries: tuple[CatalogEntry, ...]
    next_page_token: str


class CatalogPipeline:
    def __init__(self, catalog: Catalog, choices: Mapping[Task, ModelChoice]) -> None:
        self._catalog = catalog
        self._choices = choices

    async def list_models(self, task: Task | None, page_size: int, page_token: str
                          ) -> CatalogPage:
        violations = []
        if not 0 <= page_size <= MAX_PAGE_SIZE:
            violations.append(FieldViolation(
                Input.REQUEST, "page_size", f"must be in [0, {MAX_PAGE_SIZE}] (0 = default)"))
        offset = _offset(page_token, task, violations)
        if violations:
            raise InvalidArgumentError("INVALID_ARGUMENT", tuple(violations))
        entries = [e for e in await self._served() if task is None or e.info.task is task]
        entries.sort(key=lambda e: (list(Task).index(e.info.task), e.info.name))
        size = page_size or DEFAULT_PAGE_SIZE
        page = entries[offset:offset + size]
        more = offset + size < len(entries)
        return CatalogPage(tuple(page), _token(offset + size, task) if more else "")

    async def get_model(self, name: str, version: str) -> CatalogEntry:
        violations = check_version(ModelRef(name, version))
        if not name:
            violations.append(FieldViolation(Input.OPTIONS, "name", "required"))
        if violations:
            raise InvalidArgumentError("INVALID_ARGUMENT", tuple(violations))
        for entry in await self._served():
            if entry.info.name != name:
                continue
            if version and version not in {v.version for v in entry.info.versions}:
                raise ModelNotFoundError(ModelRef(name, version), "version")
            return entry
        raise ModelNotFoundError(ModelRef(name, version), "name")

    async def _served(self) -> list[CatalogEntry]:
        entries = []
        for info in await self._catalog.models():
            choice = self._choices.get(info.task)
            if choice is not None and info.name in choice.allowed:
                entries.append(CatalogEntry(info, info.name == choice.default))
        return entries


def _token(offset: int, task: Task | None) -> str:
    raw = json.dumps({"offset": offset, "task": task.value if task else ""}).encode()
    return base64.urlsafe_b64encode(raw).decode()


def _offset(token: str, task: Task | None, violations: list[FieldViolation]) -> int:
    if not token:
        return 0
    try:
        decoded = json.loads(base64.urlsafe_b64decode(token.encode()))
        offset, made_for = int(decoded["offset"]), decoded["task"]
    except (ValueError, KeyError, TypeError, binascii.Error):
        violations.append(FieldViolation(Input.REQUEST, "page_token", "not a token this "
                                         "service issued"))
        return 0
    if made_for != (task.value if task else "") or offset < 0:
        violations.append(FieldViolation(
            Input.REQUEST, "page_token", "was issued for a different filter"))
        return 0
    return offset
