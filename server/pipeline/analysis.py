"""Several analyses of one image: every requested task's options are checked first (all
violations at once, named under the task's key), the image is checked once, then the analyses
run concurrently and each keeps its own outcome, so one failing analysis never hides the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from server.domain import (
    DetectionResult,
    DetectOptionsInput,
    EmbeddingResult,
    EmbedOptionsInput,
    FaceOptionsInput,
    FacesResult,
    FieldViolation,
    Input,
    InvalidArgumentError,
    ModelNotFoundError,
    OcrOptionsInput,
    OcrResult,
)
from server.pipeline.detection import DetectionPipeline
from server.pipeline.embedding import EmbeddingPipeline
from server.pipeline.faces import FacesPipeline
from server.pipeline.ocr import OcrPipeline

T = TypeVar("T")

# The options key of each analysis, as AnalysisOptions names it.
OBJECTS, EMBEDDING, FACES, TEXT = "objects", "embedding", "faces", "text"


@dataclass(frozen=True, slots=True)
class AnalysisInput:
    """The analyses asked for (None: not asked), with their options as given."""

    objects: DetectOptionsInput | None = None
    embedding: EmbedOptionsInput | None = None
    faces: FaceOptionsInput | None = None
    text: OcrOptionsInput | None = None


@dataclass(frozen=True, slots=True)
class Outcome(Generic[T]):
    """One analysis: its result, or the error that ended it."""

    result: T | None = None
    error: Exception | None = None


@dataclass(frozen=True, slots=True)
class AnalysisResult:
    width: int
    height: int
    objects: Outcome[DetectionResult] | None
    embedding: Outcome[EmbeddingResult] | None
    faces: Outcome[FacesResult] | None
    text: Outcome[OcrResult] | None


class AnalysisPipeline:
    def __init__(self, detection: DetectionPipeline, embedding: EmbeddingPipeline,
                 faces: FacesPipeline, ocr: OcrPipeline) -> None:
        self._detection = detection
        self._embedding = embedding
        self._faces = faces
        self._ocr = ocr

    async def analyze(self, content: bytes, given: AnalysisInput, request_id: str,
                      timeout_s: float | None) -> AnalysisResult:
        resolved = self._resolve(given)
        self._detection.check_image(content)
        runs: dict[str, Awaitable[Any]] = {}
        if resolved.get(OBJECTS) is not None:
            runs[OBJECTS] = self._detection.run(content, resolved[OBJECTS], request_id, timeout_s)
        if resolved.get(EMBEDDING) is not None:
            runs[EMBEDDING] = self._embedding.run(
                content, resolved[EMBEDDING], request_id, timeout_s)
        if resolved.get(FACES) is not None:
            runs[FACES] = self._faces.run(content, resolved[FACES], request_id, timeout_s)
        if resolved.get(TEXT) is not None:
            runs[TEXT] = self._ocr.run(content, resolved[TEXT], request_id, timeout_s)
        done = await asyncio.gather(*runs.values(), return_exceptions=True)
        outcomes: dict[str, Outcome[Any]] = {}
        for key, value in zip(runs, done, strict=True):
            if isinstance(value, BaseException) and not isinstance(value, Exception):
                raise value  # cancellation and the like end the whole call
            outcomes[key] = (Outcome(error=value) if isinstance(value, Exception)
                             else Outcome(result=value))
        _raise_if_undecodable(outcomes)
        width, height = next(((o.result.width, o.result.height) for o in outcomes.values()
                              if o.result is not None), (0, 0))
        return AnalysisResult(width, height, outcomes.get(OBJECTS), outcomes.get(EMBEDDING),
                              outcomes.get(FACES), outcomes.get(TEXT))

    def _resolve(self, given: AnalysisInput) -> dict[str, Any]:
        """Each requested task's resolved options; every violation of every task at once."""
        resolvers: dict[str, tuple[Any, Any]] = {
            OBJECTS: (given.objects, self._detection.resolve_options),
            EMBEDDING: (given.embedding, self._embedding.resolve_options),
            FACES: (given.faces, self._faces.resolve_options),
            TEXT: (given.text, self._ocr.resolve_options),
        }
        if all(options is None for options, _ in resolvers.values()):
            raise InvalidArgumentError.one(
                "INVALID_OPTION", Input.OPTIONS, "",
                "ask for at least one analysis: objects, embedding, faces or text")
        resolved: dict[str, Any] = {}
        violations: list[FieldViolation] = []
        for key, (options, resolve) in resolvers.items():
            if options is None:
                continue
            try:
                resolved[key] = resolve(options)
            except InvalidArgumentError as exc:
                violations.extend(FieldViolation(v.input, _under(key, v.path), v.description)
                                  for v in exc.violations)
            except ModelNotFoundError as exc:
                raise ModelNotFoundError(exc.model, _under(key, exc.path)) from exc
        if violations:
            raise InvalidArgumentError("INVALID_OPTION", tuple(violations))
        return resolved


def _under(key: str, path: str) -> str:
    return f"{key}.{path}" if path else key


def _raise_if_undecodable(outcomes: dict[str, Outcome[Any]]) -> None:
    """An image that no analysis could decode fails as a whole, as it would in a single-task
    call, rather than as N identical per-analysis failures."""
    errors = [o.error for o in outcomes.values()]
    if errors and all(isinstance(e, InvalidArgumentError) and e.reason == "IMAGE_DECODE_FAILED"
                      for e in errors):
        first = errors[0]
        assert first is not None
        raise first
