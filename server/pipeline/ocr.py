"""Text recognition: resolve options, check the image, run the OCR model (detection, direction
and recognition of lines, in reading order, all inside Triton)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from server.domain import ImageLimits, InvalidArgumentError, OcrOptions, OcrOptionsInput, OcrResult
from server.images import inspect_image
from server.pipeline.analysis import AnalysisKey
from server.pipeline.options import ModelChoice, check_version

# Text in an analysis: AnalysisOptions.text and ImageAnalysis.text.
TEXT: AnalysisKey[OcrOptionsInput, OcrResult] = AnalysisKey("text")


class TextReader(Protocol):
    async def read_text(
        self, content: bytes, options: OcrOptions, request_id: str, timeout_s: float | None
    ) -> OcrResult: ...


@dataclass(frozen=True, slots=True)
class OcrConfig:
    models: ModelChoice
    limits: ImageLimits


class OcrPipeline:
    def __init__(self, reader: TextReader, config: OcrConfig) -> None:
        self._reader = reader
        self._config = config

    def resolve_options(self, given: OcrOptionsInput) -> OcrOptions:
        violations = check_version(given.model)
        if violations:
            raise InvalidArgumentError("INVALID_OPTION", tuple(violations))
        return OcrOptions(model=self._config.models.resolve(given.model))

    def check_image(self, content: bytes) -> None:
        inspect_image(content, self._config.limits)

    async def read_text(self, content: bytes, given: OcrOptionsInput, request_id: str,
                        timeout_s: float | None) -> OcrResult:
        options = self.resolve_options(given)
        self.check_image(content)
        return await self.run(content, options, request_id, timeout_s)

    async def run(self, content: bytes, options: OcrOptions, request_id: str,
                  timeout_s: float | None) -> OcrResult:
        return await self._reader.read_text(content, options, request_id, timeout_s)
