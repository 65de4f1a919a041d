"""Faces: resolve options, check the image, run the face model (detection, alignment and
identity embedding happen inside Triton), keep the best max_faces."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Protocol

from server.domain import (
    FaceOptions,
    FaceOptionsInput,
    FacesResult,
    FieldViolation,
    ImageLimits,
    InvalidArgumentError,
)
from server.images import inspect_image
from server.pipeline.analysis import AnalysisKey
from server.pipeline.options import ModelChoice, check_version, count, unit_interval

MAX_FACES = 1000

# Faces in an analysis: AnalysisOptions.faces and ImageAnalysis.faces.
FACES: AnalysisKey[FaceOptionsInput, FacesResult] = AnalysisKey("faces")


class FaceDetector(Protocol):
    async def detect_faces(
        self, content: bytes, options: FaceOptions, request_id: str, timeout_s: float | None
    ) -> FacesResult: ...


@dataclass(frozen=True, slots=True)
class FacesConfig:
    models: ModelChoice
    default_score_threshold: float
    default_max_faces: int
    limits: ImageLimits


class FacesPipeline:
    def __init__(self, detector: FaceDetector, config: FacesConfig) -> None:
        self._detector = detector
        self._config = config

    def resolve_options(self, given: FaceOptionsInput) -> FaceOptions:
        cfg = self._config
        violations: list[FieldViolation] = []
        score = unit_interval(given.score_threshold, cfg.default_score_threshold,
                              "score_threshold", violations)
        max_faces = count(given.max_faces, cfg.default_max_faces, MAX_FACES, "max_faces",
                          violations)
        violations.extend(check_version(given.model))
        if violations:
            raise InvalidArgumentError("INVALID_OPTION", tuple(violations))
        return FaceOptions(model=cfg.models.resolve(given.model), score_threshold=score,
                           include_embeddings=given.include_embeddings, max_faces=max_faces)

    def check_image(self, content: bytes) -> None:
        inspect_image(content, self._config.limits)

    async def detect_faces(self, content: bytes, given: FaceOptionsInput, request_id: str,
                           timeout_s: float | None) -> FacesResult:
        options = self.resolve_options(given)
        self.check_image(content)
        return await self.run(content, options, request_id, timeout_s)

    async def run(self, content: bytes, options: FaceOptions, request_id: str,
                  timeout_s: float | None) -> FacesResult:
        result = await self._detector.detect_faces(content, options, request_id, timeout_s)
        faces = sorted(result.faces, key=lambda face: face.score, reverse=True)
        return replace(result, faces=tuple(faces[: options.max_faces]))
