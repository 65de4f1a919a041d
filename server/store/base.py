"""The vector store interface: what an ingested image is stored as, how it is queried, the errors.

Both backends (embedded SQLite + HNSW, OpenSearch) implement `VectorStore` and accept exactly the
records and filters defined here, validated by the same functions, so the pipeline above never
knows which one it talks to. Nothing here knows gRPC, protobuf or the pipeline.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Protocol

import numpy as np
import numpy.typing as npt

from server.domain import (
    Box,
    FieldViolation,
    Input,
    InvalidArgumentError,
)

Vector = npt.NDArray[np.float32]

MAX_TENANT_CHARS = 128
MAX_IMAGE_ID_CHARS = 256
MAX_METADATA_ENTRIES = 64
MAX_METADATA_KEY_CHARS = 128
MAX_METADATA_VALUE_CHARS = 1024
MAX_K = 1000
# offset + k stays within OpenSearch's default index.max_result_window (10 000).
MAX_OFFSET = 9_000

DEFAULT_IMAGE_DIM = 1280
DEFAULT_FACE_DIM = 128

# A metadata value that reads as a plain decimal number takes part in numeric ranges; "nan",
# "inf" and "1_000" (all accepted by float()) are deliberately not numbers here.
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


class Space(enum.StrEnum):
    """An embedding space: one HNSW index (embedded) or one knn_vector index (OpenSearch)."""

    IMAGES = "images"
    FACES = "faces"


class IndexKind(enum.StrEnum):
    """The four indexes an ingested image feeds; also the unit of `count` and `Filters.indexes`."""

    IMAGES = "images"
    FACES = "faces"
    OBJECTS = "objects"
    OCR = "ocr"


SPACE_KIND = {Space.IMAGES: IndexKind.IMAGES, Space.FACES: IndexKind.FACES}


class MatchKind(enum.StrEnum):
    """Which part of a record a text hit matched."""

    OCR_LINE = "ocr_line"
    LABEL = "label"
    OBJECT = "object"


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
    """A detected face; `embedding` is float32, read-only, stored and returned as given."""

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
    timezone-aware; it comes back as UTC with microsecond precision.
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


@dataclass(frozen=True, slots=True)
class MetadataRange:
    """`gte <= metadata[key] <= lte`; an open side is None.

    Number bounds compare numerically and match only values that read as decimal numbers;
    string bounds compare by Unicode code point. Both bounds of one range have the same type.
    """

    key: str
    gte: float | str | None = None
    lte: float | str | None = None

    @property
    def numeric(self) -> bool:
        return not isinstance(self.gte, str) and not isinstance(self.lte, str)


@dataclass(frozen=True, slots=True)
class Filters:
    """Conditions a hit must meet, all of them (AND); an empty field means no condition.

    labels: any of these image-level labels. metadata: every key equal to its value.
    ranges: every range holds. indexes: hits only from these indexes (k-NN: the space's own
    index must be listed; text: images = image labels, objects = object labels, ocr = OCR text).
    """

    labels: frozenset[str] = frozenset()
    metadata: Mapping[str, str] = field(default_factory=dict)
    ranges: tuple[MetadataRange, ...] = ()
    indexes: frozenset[IndexKind] = frozenset()
    person_ids: frozenset[str] = frozenset()
    exclude_ids: frozenset[str] = frozenset()

    def allows(self, kind: IndexKind) -> bool:
        return not self.indexes or kind in self.indexes


NO_FILTERS = Filters()


@dataclass(frozen=True, slots=True)
class VectorHit:
    """One k-NN hit: `score` is the exact cosine similarity in [-1, 1], higher is nearer.

    For the faces space `face_index` is the position in `ImageRecord.faces` and `box` its box.
    """

    image_id: str
    score: float
    space: Space
    face_index: int | None = None
    box: Box | None = None
    person_id: str = ""


@dataclass(frozen=True, slots=True)
class BrowseHit:
    image_id: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Person:
    """Faces grouped by identity; the cover is the person's highest-scoring face."""

    id: str
    name: str
    face_count: int
    image_count: int
    cover_image_id: str
    cover_box: Box | None


@dataclass(frozen=True, slots=True)
class TextMatch:
    """A part of the record that contains a query term; `index` is its position in the record."""

    kind: MatchKind
    index: int
    text: str
    box: Box | None = None


@dataclass(frozen=True, slots=True)
class TextHit:
    """One image found by text; `score` is BM25 (higher is better, comparable within a query)."""

    image_id: str
    score: float
    matches: tuple[TextMatch, ...]


class VectorStore(Protocol):
    """The store the ingest and search pipeline talks to. Every call is scoped to one tenant.

    Results are deterministic: equal scores are ordered by image id (then face index), so
    paging with `offset` over an unchanged store never repeats or skips a hit.
    """

    async def upsert(self, record: ImageRecord) -> None:
        """Store the record atomically, replacing any record with its (tenant, image_id) and ALL
        of that record's sub-records. Returns once the write is durable and searchable."""

    async def upsert_many(self, records: Sequence[ImageRecord]) -> None:
        """`upsert` for a batch in one round trip (one transaction / one `_bulk`); each record is
        replaced whole. Image ids within one batch are distinct."""

    async def delete(self, tenant: str, image_id: str) -> bool:
        """Remove the record and its sub-records; False when there was none."""

    async def get(self, tenant: str, image_id: str) -> ImageRecord | None: ...

    async def knn(
        self,
        tenant: str,
        space: Space,
        vector: Vector,
        k: int,
        filters: Filters = NO_FILTERS,
        offset: int = 0,
        min_score: float | None = None,
    ) -> tuple[VectorHit, ...]:
        """The k nearest (cosine) matching vectors after skipping `offset`; fewer only when fewer
        match. Hits scoring below `min_score` are not returned."""

    async def browse(self, tenant: str, filters: Filters, k: int,
                     offset: int = 0) -> tuple[BrowseHit, ...]:
        """Every matching image, newest first (then by id), paged."""

    async def find_duplicate(self, tenant: str, content_sha256: str, embedding: Vector | None,
                             min_cosine: float, exclude_id: str) -> str | None:
        """A stored image other than `exclude_id` with the same bytes, else the nearest by image
        embedding with cosine >= min_cosine, else None."""

    async def list_people(self, tenant: str, k: int, offset: int = 0) -> tuple[Person, ...]:
        """People with at least one face, most faces first (then by id)."""

    async def get_person(self, tenant: str, person_id: str) -> Person | None: ...

    async def rename_person(self, tenant: str, person_id: str, name: str) -> Person | None:
        """None when no stored face belongs to the person."""

    async def merge_people(self, tenant: str, person_ids: Sequence[str],
                           target_id: str) -> Person | None:
        """Moves every face of `person_ids` to `target_id`; None when the target is unknown."""

    async def search_text(
        self,
        tenant: str,
        query: str,
        k: int,
        filters: Filters = NO_FILTERS,
        offset: int = 0,
    ) -> tuple[TextHit, ...]:
        """Images ranked by BM25 of the query's terms (any term) over OCR text and labels."""

    async def count(self, tenant: str, kind: IndexKind) -> int:
        """How many entries the tenant has in one index (images, faces, objects or OCR lines)."""

    async def close(self) -> None: ...


def frozen_vector(values: npt.ArrayLike) -> Vector:
    """A read-only, contiguous float32 copy (or the array itself when it already is one)."""
    array = np.asarray(values, dtype=np.float32)
    if array.flags.writeable or not array.flags.c_contiguous:
        array = np.ascontiguousarray(array).copy()
        array.flags.writeable = False
    return array


def metadata_number(value: str) -> float | None:
    """The numeric reading of a metadata value used by numeric ranges, or None."""
    if _NUMBER.fullmatch(value) is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _bad(field_path: str, description: str) -> InvalidArgumentError:
    """Paths are relative to the store call's arguments; the pipeline checks what a caller sends
    before it reaches the store, so these name programming errors more than bad requests."""
    return InvalidArgumentError.one("INVALID_STORE_ARGUMENT", Input.REQUEST, field_path,
                                    description)


def check_tenant(tenant: str) -> None:
    if not tenant or len(tenant) > MAX_TENANT_CHARS:
        raise _bad("tenant", f"must be 1 to {MAX_TENANT_CHARS} characters")


def check_image_id(image_id: str) -> None:
    if not image_id or len(image_id) > MAX_IMAGE_ID_CHARS:
        raise _bad("image_id", f"must be 1 to {MAX_IMAGE_ID_CHARS} characters")


def check_vector(values: Vector, dim: int, field_path: str) -> None:
    if values.ndim != 1 or values.shape[0] != dim:
        raise _bad(field_path, f"must have {dim} dimensions, has shape {values.shape}")
    if not np.all(np.isfinite(values)):
        raise _bad(field_path, "must be finite")
    # Cosine similarity is undefined for a zero vector (OpenSearch rejects one outright).
    if not np.any(values):
        raise _bad(field_path, "must not be all zeros")


def check_score(value: float, field_path: str) -> None:
    if not math.isfinite(value):
        raise _bad(field_path, "must be finite")


def check_record(record: ImageRecord, dims: Mapping[Space, int]) -> None:
    """Raise InvalidArgumentError (with the field path) unless every backend can store this."""
    check_tenant(record.tenant)
    check_image_id(record.image_id)
    if record.created_at.tzinfo is None:
        raise _bad("created_at", "must be timezone-aware")
    if record.width < 0 or record.height < 0:
        raise _bad("width", "image size must not be negative")
    check_metadata(record.metadata, "metadata")
    if record.embedding is not None:
        check_vector(record.embedding, dims[Space.IMAGES], "embedding")
    for i, label in enumerate(record.labels):
        check_score(label.score, f"labels[{i}].score")
    for i, obj in enumerate(record.objects):
        check_score(obj.score, f"objects[{i}].score")
    for i, face in enumerate(record.faces):
        check_score(face.score, f"faces[{i}].score")
        check_vector(face.embedding, dims[Space.FACES], f"faces[{i}].embedding")
    for i, line in enumerate(record.ocr_lines):
        check_score(line.confidence, f"ocr_lines[{i}].confidence")


def check_batch(records: Sequence[ImageRecord], dims: Mapping[Space, int]) -> None:
    seen: set[tuple[str, str]] = set()
    for i, record in enumerate(records):
        try:
            check_record(record, dims)
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(
                exc.reason,
                tuple(FieldViolation(v.input, f"records[{i}].{v.path}", v.description)
                      for v in exc.violations),
            ) from None
        if (record.tenant, record.image_id) in seen:
            raise _bad(f"records[{i}].image_id", "appears twice in one batch")
        seen.add((record.tenant, record.image_id))


def check_metadata(metadata: Mapping[str, str], field_path: str) -> None:
    if len(metadata) > MAX_METADATA_ENTRIES:
        raise _bad(field_path, f"at most {MAX_METADATA_ENTRIES} entries")
    for key, value in metadata.items():
        if not key or len(key) > MAX_METADATA_KEY_CHARS:
            raise _bad(f"{field_path}[{key!r}]", f"keys are 1 to {MAX_METADATA_KEY_CHARS} chars")
        if len(value) > MAX_METADATA_VALUE_CHARS:
            raise _bad(f"{field_path}[{key!r}]", f"values are at most {MAX_METADATA_VALUE_CHARS}")


def check_query(k: int, offset: int, filters: Filters) -> None:
    if not 1 <= k <= MAX_K:
        raise _bad("k", f"must be 1 to {MAX_K}")
    if not 0 <= offset <= MAX_OFFSET:
        raise _bad("offset", f"must be 0 to {MAX_OFFSET}")
    check_metadata(filters.metadata, "filters.metadata")
    for i, bound in enumerate(filters.ranges):
        path = f"filters.ranges[{i}]"
        if not bound.key:
            raise _bad(f"{path}.key", "must not be empty")
        if bound.gte is None and bound.lte is None:
            raise _bad(path, "needs gte, lte or both")
        kinds = {isinstance(b, str) for b in (bound.gte, bound.lte) if b is not None}
        if len(kinds) > 1:
            raise _bad(path, "gte and lte must both be numbers or both be strings")
        for name, b in (("gte", bound.gte), ("lte", bound.lte)):
            if isinstance(b, float | int) and not math.isfinite(b):
                raise _bad(f"{path}.{name}", "must be finite")
