"""What an ingested image is stored as: frozen records shared by the ingest pipeline, the
servicers' converters and the store backends.

Beside domain.py on the ground floor: it imports only domain types, so a servicer that turns a
stored image into a reply never reaches into a store backend for the type.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType

import numpy as np
import numpy.typing as npt

from server.domain import Box

Vector = npt.NDArray[np.float32]


class IndexKind(enum.StrEnum):
    """The four indexes an ingested image feeds; also the unit of `count` and `Filters.indexes`."""

    IMAGES = "images"
    FACES = "faces"
    OBJECTS = "objects"
    OCR = "ocr"


def frozen_vector(values: npt.ArrayLike) -> Vector:
    """A read-only, contiguous float32 copy (or the array itself when it already is one)."""
    array = np.asarray(values, dtype=np.float32)
    if array.flags.writeable or not array.flags.c_contiguous:
        array = np.ascontiguousarray(array).copy()
        array.flags.writeable = False
    return array


@dataclass(frozen=True, slots=True)
class Label:
    """An image-level label (ImageNet class or a detected COCO class) with its score in [0, 1]."""

    name: str
    score: float


@dataclass(frozen=True, slots=True)
class ObjectRecord:
    label: str
    score: float
    box: Box


@dataclass(frozen=True, slots=True, eq=False)
class FaceRecord:
    """A detected face; `embedding` is float32, read-only, stored and returned as given.

    `person_id`: the person the face belongs to ("" for none); assigned before the face is
    stored, and changed afterwards only by merging people.
    """

    box: Box
    score: float
    embedding: Vector
    person_id: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "embedding", frozen_vector(self.embedding))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FaceRecord):
            return NotImplemented
        return (
            self.box == other.box
            and self.score == other.score
            and self.person_id == other.person_id
            and np.array_equal(self.embedding, other.embedding)
        )

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, slots=True)
class OcrLine:
    text: str
    confidence: float
    box: Box


@dataclass(frozen=True, slots=True, eq=False)
class ImageRecord:
    """Everything the store keeps for one ingested image; the unit of upsert, get and delete.

    Boxes are in pixels of the decoded image (`width` x `height`). `created_at` must be
    timezone-aware; it comes back as UTC with microsecond precision. `content_sha256`: the
    SHA-256 of the image's bytes as uploaded (lowercase hex, or "" when unknown);
    `duplicate_of`: the id of an image stored earlier that this one duplicates, or "".
    """

    tenant: str
    image_id: str
    created_at: datetime
    width: int
    height: int
    metadata: Mapping[str, str] = field(default_factory=dict)
    embedding: Vector | None = None
    labels: tuple[Label, ...] = ()
    objects: tuple[ObjectRecord, ...] = ()
    faces: tuple[FaceRecord, ...] = ()
    ocr_lines: tuple[OcrLine, ...] = ()
    ocr_text: str = ""
    content_sha256: str = ""
    duplicate_of: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "metadata", MappingProxyType(dict(self.metadata)))
        if self.embedding is not None:
            object.__setattr__(self, "embedding", frozen_vector(self.embedding))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ImageRecord):
            return NotImplemented
        same_embedding = (self.embedding is None and other.embedding is None) or (
            self.embedding is not None
            and other.embedding is not None
            and np.array_equal(self.embedding, other.embedding)
        )
        return same_embedding and (
            self.tenant,
            self.image_id,
            self.created_at,
            self.width,
            self.height,
            dict(self.metadata),
            self.labels,
            self.objects,
            self.faces,
            self.ocr_lines,
            self.ocr_text,
            self.content_sha256,
            self.duplicate_of,
        ) == (
            other.tenant,
            other.image_id,
            other.created_at,
            other.width,
            other.height,
            dict(other.metadata),
            other.labels,
            other.objects,
            other.faces,
            other.ocr_lines,
            other.ocr_text,
            other.content_sha256,
            other.duplicate_of,
        )

    __hash__ = None  # type: ignore[assignment]
