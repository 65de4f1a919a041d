"""Ingest: check the id and metadata, analyse the image once through every task (objects,
embedding and classes, faces with identity embeddings, text), and store the result as one
record that feeds the four indexes. Nothing is written unless every analysis succeeded, and an
id ingested again is replaced whole (the store's upsert is atomic).

Before the write, the record learns which stored image it duplicates (same SHA-256 of the bytes,
or an image embedding at least `near_duplicate_cosine` alike) and which person each face joins
(server/pipeline/people.py). Those decisions and the write happen under one lock per process,
so that two images of one upload see each other: a photo and its copy in one stream are still
reported as duplicates, and two new faces of one person form one person, not two."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, TypeVar

import numpy as np

from server.domain import (
    DetectOptionsInput,
    EmbedOptionsInput,
    FaceOptionsInput,
    FieldViolation,
    Input,
    InvalidArgumentError,
    ModelRef,
    NotFoundError,
    OcrOptionsInput,
)
from server.pipeline.analysis import (
    AnalysisInput,
    AnalysisKey,
    AnalysisPipeline,
    AnalysisResult,
    ImageResult,
)
from server.pipeline.detection import OBJECTS
from server.pipeline.embedding import EMBEDDING
from server.pipeline.faces import FACES
from server.pipeline.ocr import TEXT
from server.pipeline.people import assign_people
from server.store.base import (
    MAX_IMAGE_ID_CHARS,
    MAX_METADATA_ENTRIES,
    MAX_METADATA_KEY_CHARS,
    MAX_METADATA_VALUE_CHARS,
    FaceRecord,
    ImageRecord,
    Label,
    ObjectRecord,
    OcrLine,
    VectorStore,
)

R = TypeVar("R", bound=ImageResult)

# Classes below this probability say little about the image; the best class is always kept.
MIN_CLASS_SCORE = 0.1

# What a record is made of (to_record), each with the default model: the faces' identity
# embeddings feed the face index.
STORED_ANALYSES = AnalysisInput(
    OBJECTS.ask(DetectOptionsInput(ModelRef(""))),
    EMBEDDING.ask(EmbedOptionsInput(ModelRef(""))),
    FACES.ask(FaceOptionsInput(ModelRef(""), include_embeddings=True)),
    TEXT.ask(OcrOptionsInput(ModelRef(""))),
)


@dataclass(frozen=True, slots=True)
class IngestInput:
    image_id: str
    metadata: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class IngestConfig:
    near_duplicate_cosine: float
    match_cosine: float


class IngestPipeline:
    def __init__(self, analysis: AnalysisPipeline, store: VectorStore, config: IngestConfig,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._analysis = analysis
        self._store = store
        self._config = config
        self._clock = clock
        self._write = asyncio.Lock()

    async def ingest(self, tenant: str, given: IngestInput, content: bytes, request_id: str,
                     timeout_s: float | None) -> ImageRecord:
        check_ingest(given)
        result = await self._analysis.analyze(content, STORED_ANALYSES, request_id, timeout_s)
        digest = await asyncio.to_thread(lambda: hashlib.sha256(content).hexdigest())
        record = replace(to_record(tenant, given, result, self._clock()), content_sha256=digest)
        async with self._write:
            duplicate_of = await self._store.find_duplicate(
                tenant, digest, record.embedding, self._config.near_duplicate_cosine,
                exclude_id=given.image_id)
            record = await assign_people(
                self._store, replace(record, duplicate_of=duplicate_of or ""),
                self._config.match_cosine)
            await self._store.upsert(record)
        return record

    async def get(self, tenant: str, image_id: str) -> ImageRecord:
        _check_id(image_id, Input.REQUEST, "id")
        record = await self._store.get(tenant, image_id)
        if record is None:
            raise NotFoundError("image", image_id, "id")
        return record

    async def delete(self, tenant: str, image_id: str) -> None:
        _check_id(image_id, Input.REQUEST, "id")
        if not await self._store.delete(tenant, image_id):
            raise NotFoundError("image", image_id, "id")


def check_ingest(given: IngestInput) -> None:
    violations: list[FieldViolation] = []
    try:
        _check_id(given.image_id, Input.OPTIONS, "id")
    except InvalidArgumentError as exc:
        violations.extend(exc.violations)
    if len(given.metadata) > MAX_METADATA_ENTRIES:
        violations.append(FieldViolation(Input.OPTIONS, "metadata",
                                         f"at most {MAX_METADATA_ENTRIES} entries"))
    for key, value in sorted(given.metadata.items()):
        path = f"metadata[{key[:MAX_METADATA_KEY_CHARS]!r}]"
        if not 1 <= len(key) <= MAX_METADATA_KEY_CHARS or not key.isprintable():
            violations.append(FieldViolation(
                Input.OPTIONS, path, f"keys are 1 to {MAX_METADATA_KEY_CHARS} printable "
                "characters"))
        if len(value) > MAX_METADATA_VALUE_CHARS:
            violations.append(FieldViolation(
                Input.OPTIONS, path, f"values are at most {MAX_METADATA_VALUE_CHARS} characters"))
    if violations:
        raise InvalidArgumentError("INVALID_ARGUMENT", tuple(violations))


def _check_id(image_id: str, root: Input, path: str) -> None:
    if not 1 <= len(image_id) <= MAX_IMAGE_ID_CHARS or not image_id.isprintable():
        raise InvalidArgumentError.one(
            "INVALID_ARGUMENT", root, path,
            f"must be 1 to {MAX_IMAGE_ID_CHARS} printable characters")


def to_record(tenant: str, given: IngestInput, result: AnalysisResult,
              created_at: datetime) -> ImageRecord:
    """The stored form of a complete analysis; raises the first analysis's error if any failed,
    so that an image is stored whole or not at all."""
    for outcome in result.outcomes.values():
        if outcome.error is not None:
            raise outcome.error
    objects, embedded = _result(result, OBJECTS), _result(result, EMBEDDING)
    faces, text = _result(result, FACES), _result(result, TEXT)
    labels: dict[str, float] = {}
    for rank, found in enumerate(embedded.classifications):
        if rank == 0 or found.score >= MIN_CLASS_SCORE:
            labels[found.label] = max(labels.get(found.label, 0.0), found.score)
    for detection in objects.detections:
        labels[detection.label] = max(labels.get(detection.label, 0.0), detection.score)
    return ImageRecord(
        tenant=tenant,
        image_id=given.image_id,
        created_at=created_at,
        width=result.width,
        height=result.height,
        metadata=MappingProxyType(dict(given.metadata)),
        embedding=np.asarray(embedded.embedding, dtype=np.float32),
        labels=tuple(Label(name, score) for name, score in
                     sorted(labels.items(), key=lambda item: (-item[1], item[0]))),
        objects=tuple(ObjectRecord(d.label, d.score, d.box) for d in objects.detections),
        faces=tuple(FaceRecord(f.box, f.score, np.asarray(f.embedding, dtype=np.float32))
                    for f in faces.faces if f.embedding is not None),
        ocr_lines=tuple(OcrLine(line.text, line.confidence, line.box) for line in text.lines),
        ocr_text=text.text,
    )


def _result(result: AnalysisResult, key: AnalysisKey[Any, R]) -> R:
    outcome = result.outcome(key)
    assert outcome is not None and outcome.result is not None, key.name
    return outcome.result
