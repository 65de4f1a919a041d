"""The vector store interface: how stored images are queried, the filters, the limits.

Both backends (embedded SQLite + HNSW, OpenSearch) implement `VectorStore` over the records of
server/records.py (re-exported here) and the filters defined here. `open_store` wraps each in
`CheckedStore` (checked.py), which checks every argument once, so the backends trust what
reaches them and the pipeline above never knows which one it talks to. Nothing here knows gRPC,
protobuf or the pipeline.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from server.domain import Box
from server.records import (
    FaceRecord,
    ImageRecord,
    IndexKind,
    Label,
    ObjectRecord,
    OcrLine,
    Vector,
    frozen_vector,
)

__all__ = [
    "FaceRecord",
    "ImageRecord",
    "IndexKind",
    "Label",
    "ObjectRecord",
    "OcrLine",
    "Vector",
    "frozen_vector",
]


MAX_TENANT_CHARS = 128
MAX_IMAGE_ID_CHARS = 256
MAX_METADATA_ENTRIES = 64
MAX_METADATA_KEY_CHARS = 128
MAX_METADATA_VALUE_CHARS = 1024
MAX_K = 1000
MAX_PERSON_ID_CHARS = 128
MAX_PERSON_NAME_CHARS = 256
# Ids in one person_ids or exclude_ids filter (OpenSearch's `terms` takes up to 65 536).
MAX_FILTER_IDS = 1024
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


SPACE_KIND = {Space.IMAGES: IndexKind.IMAGES, Space.FACES: IndexKind.FACES}


class MatchKind(enum.StrEnum):
    """Which part of a record a text hit matched."""

    OCR_LINE = "ocr_line"
    LABEL = "label"
    OBJECT = "object"


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
    index must be listed; text: images = image labels, objects = object labels, ocr = OCR text;
    browsing lists images and ignores it). person_ids: images with a face of any of these
    people (in the faces space: those people's faces). exclude_ids: images never returned.
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

    For the faces space `face_index` is the position in `ImageRecord.faces`, `box` its box and
    `person_id` its person ("" for none).
    """

    image_id: str
    score: float
    space: Space
    face_index: int | None = None
    box: Box | None = None
    person_id: str = ""


@dataclass(frozen=True, slots=True)
class BrowseHit:
    """One image listed by `browse`: newest first, ties by image id."""

    image_id: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Person:
    """Faces grouped under one person id; exists while at least one stored face carries the id.

    cover_image_id and cover_box: the person's highest-scoring face (ties: image id, position).
    """

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
    """One image found by text; higher `score` is better, comparable within a query only.

    Images with a whole query word come first, scored by BM25 (> 0); images matched only by
    parts of words (terms of 3 or more characters inside or at the start of a word) follow,
    with scores in (-1, 0) that order them by BM25 over the words' three-letter pieces.
    """

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
        match. Hits whose score is below `min_score` are not returned (the same hits on every
        page: the floor cuts the one ranking that pages walk)."""

    async def search_text(
        self,
        tenant: str,
        query: str,
        k: int,
        filters: Filters = NO_FILTERS,
        offset: int = 0,
    ) -> tuple[TextHit, ...]:
        """Images ranked by BM25 of the query's terms (any term) over OCR text and labels;
        terms of 3 or more characters also match inside words, ranked after whole words."""

    async def browse(
        self, tenant: str, filters: Filters, k: int, offset: int = 0
    ) -> tuple[BrowseHit, ...]:
        """Every image that matches the filters, newest first (created_at, then image id)."""

    async def find_duplicate(
        self,
        tenant: str,
        content_sha256: str,
        embedding: Vector | None,
        min_cosine: float,
        exclude_id: str,
    ) -> str | None:
        """The id of a stored image other than `exclude_id` with these bytes (the earliest
        stored), else the nearest by image embedding with cosine >= min_cosine, else None."""

    async def list_people(self, tenant: str, k: int, offset: int = 0) -> tuple[Person, ...]:
        """The tenant's people, most faces first, then by id."""

    async def get_person(self, tenant: str, person_id: str) -> Person | None: ...

    async def rename_person(self, tenant: str, person_id: str, name: str) -> Person | None:
        """Name a person (stored apart from the faces, so it survives re-ingests of other
        images and restarts); None when no face carries the id."""

    async def merge_people(
        self, tenant: str, person_ids: frozenset[str], target_id: str
    ) -> Person | None:
        """Move every face of `person_ids` to `target_id`; None when no face carries
        `target_id`. The merged people disappear (no face carries their ids any more)."""

    async def count(self, tenant: str, kind: IndexKind) -> int:
        """How many entries the tenant has in one index (images, faces, objects or OCR lines)."""

    async def close(self) -> None: ...


def metadata_number(value: str) -> float | None:
    """The numeric reading of a metadata value used by numeric ranges, or None."""
    if _NUMBER.fullmatch(value) is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None
