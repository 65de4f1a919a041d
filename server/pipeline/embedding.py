"""Image embeddings: resolve options, check the image, run the embedding model (embedding and
classification in one Triton call)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from server.domain import (
    EmbeddingResult,
    EmbedOptions,
    EmbedOptionsInput,
    FailedPreconditionError,
    FieldViolation,
    ImageLimits,
    InvalidArgumentError,
)
from server.images import inspect_image
from server.pipeline.analysis import AnalysisKey
from server.pipeline.options import ModelChoice, check_version, count

MAX_CLASSIFICATIONS = 1000

# The embedding and classes in an analysis: AnalysisOptions.embedding, ImageAnalysis.embedding.
EMBEDDING: AnalysisKey[EmbedOptionsInput, EmbeddingResult] = AnalysisKey("embedding")


class Embedder(Protocol):
    async def embed(
        self, content: bytes, options: EmbedOptions, request_id: str, timeout_s: float | None
    ) -> EmbeddingResult: ...


@dataclass(frozen=True, slots=True)
class EmbeddingConfig:
    models: ModelChoice
    default_max_classifications: int
    limits: ImageLimits


class EmbeddingPipeline:
    def __init__(self, embedder: Embedder, config: EmbeddingConfig) -> None:
        self._embedder = embedder
        self._config = config

    def resolve_options(self, given: EmbedOptionsInput) -> EmbedOptions:
        violations: list[FieldViolation] = []
        top_k = count(given.max_classifications, self._config.default_max_classifications,
                      MAX_CLASSIFICATIONS, "max_classifications", violations)
        violations.extend(check_version(given.model))
        if violations:
            raise InvalidArgumentError("INVALID_OPTION", tuple(violations))
        return EmbedOptions(model=self._config.models.resolve(given.model),
                            max_classifications=top_k)

    def check_image(self, content: bytes) -> None:
        inspect_image(content, self._config.limits)

    async def embed(self, content: bytes, given: EmbedOptionsInput, request_id: str,
                    timeout_s: float | None) -> EmbeddingResult:
        options = self.resolve_options(given)
        self.check_image(content)
        return await self.run(content, options, request_id, timeout_s)

    async def run(self, content: bytes, options: EmbedOptions, request_id: str,
                  timeout_s: float | None) -> EmbeddingResult:
        return await self._embedder.embed(content, options, request_id, timeout_s)

    def embed_text(self, text: str) -> None:
        """Text embeddings need a CLIP-class text encoder paired with the image model. None can
        be had on the machines this release is built for, so the contract has the RPC and the
        call says plainly that it cannot be served."""
        raise FailedPreconditionError(
            "no text-embedding model is configured on this server; search by text matches "
            "labels and OCR text instead", "TEXT_EMBEDDING_UNAVAILABLE")
