"""Object detection: resolve and validate options, check the image, run the detector, and apply
the generic result shaping (class allow-list, top-k) that is not model-specific."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from server.domain import (
    DetectionResult,
    DetectOptions,
    DetectOptionsInput,
    FieldViolation,
    ImageLimits,
    Input,
    InvalidArgumentError,
)
from server.images import inspect_image
from server.pipeline.analysis import AnalysisKey
from server.pipeline.options import ModelChoice, check_version, count, unit_interval

MAX_ALLOWLIST = 100
MAX_DETECTIONS = 1000

# Detection in an analysis: AnalysisOptions.objects and ImageAnalysis.objects.
OBJECTS: AnalysisKey[DetectOptionsInput, DetectionResult] = AnalysisKey("objects")


class Detector(Protocol):
    async def detect(
        self, content: bytes, options: DetectOptions, request_id: str, timeout_s: float | None
    ) -> DetectionResult: ...


@dataclass(frozen=True, slots=True)
class DetectionConfig:
    models: ModelChoice
    default_score_threshold: float
    default_iou_threshold: float
    default_max_detections: int
    limits: ImageLimits


class DetectionPipeline:
    def __init__(self, detector: Detector, config: DetectionConfig) -> None:
        self._detector = detector
        self._config = config

    def resolve_options(self, given: DetectOptionsInput) -> DetectOptions:
        """Defaults filled in and every field checked; all violations are reported at once."""
        cfg = self._config
        violations: list[FieldViolation] = []
        score = unit_interval(given.score_threshold, cfg.default_score_threshold,
                              "score_threshold", violations)
        iou = unit_interval(given.iou_threshold, cfg.default_iou_threshold,
                            "iou_threshold", violations)
        max_detections = count(given.max_detections, cfg.default_max_detections, MAX_DETECTIONS,
                               "max_detections", violations)
        if len(given.class_allowlist) > MAX_ALLOWLIST:
            violations.append(FieldViolation(
                Input.OPTIONS, "class_allowlist", f"at most {MAX_ALLOWLIST} entries"))
        else:
            violations.extend(
                FieldViolation(Input.OPTIONS, f"class_allowlist[{i}]", "must not be blank")
                for i, label in enumerate(given.class_allowlist) if not label.strip()
            )
        violations.extend(check_version(given.model))
        if violations:
            raise InvalidArgumentError("INVALID_OPTION", tuple(violations))
        return DetectOptions(
            model=cfg.models.resolve(given.model),
            score_threshold=score,
            iou_threshold=iou,
            class_allowlist=frozenset(given.class_allowlist),
            max_detections=max_detections,
        )

    def check_image(self, content: bytes) -> None:
        inspect_image(content, self._config.limits)

    async def detect(
        self, content: bytes, given: DetectOptionsInput, request_id: str, timeout_s: float | None
    ) -> DetectionResult:
        options = self.resolve_options(given)
        self.check_image(content)
        return await self.run(content, options, request_id, timeout_s)

    async def run(self, content: bytes, options: DetectOptions, request_id: str,
                  timeout_s: float | None) -> DetectionResult:
        """Detection of an image already checked, with options already resolved."""
        result = await self._detector.detect(content, options, request_id, timeout_s)
        return shape_result(result, options)


def shape_result(result: DetectionResult, options: DetectOptions) -> DetectionResult:
    """Applies the allow-list and keeps the top max_detections by score (Triton sorts already;
    sorting again keeps this correct for any detector)."""
    kept = [d for d in result.detections
            if not options.class_allowlist or d.label in options.class_allowlist]
    kept.sort(key=lambda d: d.score, reverse=True)
    return DetectionResult(
        detections=tuple(kept[: options.max_detections]),
        width=result.width,
        height=result.height,
        model=result.model,
    )
