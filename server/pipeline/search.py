"""Search: turn a query into one ranked list per index it reaches and fuse them.

- text: BM25 over image-level labels (images index), object labels (objects) and OCR text (ocr),
  each its own ranked list, fused by reciprocal-rank fusion (RRF, k = 60) so that no index's score
  scale dominates; a hit says which indexes contributed.
- image: its embedding, k-NN on the images index (score = cosine).
- face image: its largest face's identity embedding, k-NN on the faces index, one hit per image.
- vector: k-NN on the index it names.
- similar_to_id: the stored image's own embedding, k-NN on the images index without that image.
- no query, some filter: browse, every matching image newest first.
k-NN scores are cosines; `min_score` drops hits below it in the store, so a page never holds a
hit under the floor and the ranking above the floor is the one every page is cut from.
Pages are offsets into that deterministic ranking, carried in a token bound to the query.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from server.domain import (
    Box,
    EmbedOptionsInput,
    FaceOptionsInput,
    FieldViolation,
    Input,
    InvalidArgumentError,
    ModelRef,
    NotFoundError,
)
from server.pipeline.embedding import EmbeddingPipeline
from server.pipeline.faces import FacesPipeline
from server.store.base import (
    MAX_IMAGE_ID_CHARS,
    MAX_K,
    MAX_OFFSET,
    Filters,
    IndexKind,
    MetadataRange,
    Space,
    TextHit,
    VectorHit,
    VectorStore,
)

DEFAULT_PAGE_SIZE = 10
MAX_PAGE_SIZE = 100
MAX_TEXT_CHARS = 1000
RRF_K = 60
MAX_PERSON_IDS = 100
# Text queries rank each index separately; these are the ones words can match.
TEXT_INDEXES = (IndexKind.IMAGES, IndexKind.OBJECTS, IndexKind.OCR)
SPACES = {IndexKind.IMAGES: Space.IMAGES, IndexKind.FACES: Space.FACES}


@dataclass(frozen=True, slots=True)
class RangeInput:
    key: str
    gte: str
    lte: str
    numeric: bool


@dataclass(frozen=True, slots=True)
class FiltersInput:
    labels: tuple[str, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)
    ranges: tuple[RangeInput, ...] = ()
    indexes: tuple[IndexKind, ...] = ()
    person_ids: tuple[str, ...] = ()

    def selects(self) -> bool:
        """Some condition narrows the images (`indexes` alone only picks where to look)."""
        return bool(self.labels or self.metadata or self.ranges or self.person_ids)


@dataclass(frozen=True, slots=True)
class SearchInput:
    """At most one query field is set; none browses. Image queries carry their encoded bytes."""

    text: str | None = None
    image: bytes | None = None
    face_image: bytes | None = None
    vector: tuple[float, ...] | None = None
    vector_index: IndexKind | None = None
    similar_to_id: str | None = None
    filters: FiltersInput = field(default_factory=FiltersInput)
    page_size: int = 0
    page_token: str = ""
    min_score: float | None = None

    @property
    def browses(self) -> bool:
        return all(query is None for query in (self.text, self.image, self.face_image,
                                                self.vector, self.similar_to_id))


@dataclass(frozen=True, slots=True)
class HitMatch:
    index: IndexKind
    position: int  # in the record's faces, objects or lines; -1 for the image itself
    text: str = ""
    box: Box | None = None


@dataclass(frozen=True, slots=True)
class SearchHit:
    image_id: str
    score: float
    indexes: tuple[IndexKind, ...]
    matches: tuple[HitMatch, ...]


@dataclass(frozen=True, slots=True)
class SearchPage:
    hits: tuple[SearchHit, ...]
    next_page_token: str


class SearchPipeline:
    def __init__(self, embedding: EmbeddingPipeline, faces: FacesPipeline,
                 store: VectorStore, dims: dict[Space, int]) -> None:
        self._embedding = embedding
        self._faces = faces
        self._store = store
        self._dims = dims

    async def search(self, tenant: str, given: SearchInput, request_id: str,
                     timeout_s: float | None) -> SearchPage:
        violations: list[FieldViolation] = []
        filters = _filters(given.filters, violations)
        page_size = given.page_size or DEFAULT_PAGE_SIZE
        if not 0 <= given.page_size <= MAX_PAGE_SIZE:
            violations.append(FieldViolation(
                Input.REQUEST, "page_size", f"must be in [0, {MAX_PAGE_SIZE}] (0 = default)"))
        offset = _offset(given, violations)
        self._check_query(given, violations)
        _check_min_score(given, violations)
        if violations:
            raise InvalidArgumentError("INVALID_ARGUMENT", tuple(violations))
        if given.browses:
            return await self._browse(tenant, given, filters, offset, page_size)
        if offset + page_size > MAX_K:
            raise InvalidArgumentError.one(
                "INVALID_ARGUMENT", Input.REQUEST, "page_token",
                f"results beyond the first {MAX_K} are not served; refine the query")
        limit = min(MAX_K, offset + page_size + 1)
        ranked = await self._ranked(tenant, given, filters, limit, request_id, timeout_s)
        page = tuple(ranked[offset:offset + page_size])
        more = len(ranked) > offset + page_size
        return SearchPage(page, _token(offset + page_size, given) if more else "")

    def _check_query(self, given: SearchInput, violations: list[FieldViolation]) -> None:
        if given.text is not None:
            if not given.text.strip() or len(given.text) > MAX_TEXT_CHARS:
                violations.append(FieldViolation(
                    Input.REQUEST, "text", f"must be 1 to {MAX_TEXT_CHARS} characters, not blank"))
        elif given.vector is not None:
            space = SPACES.get(given.vector_index) if given.vector_index else None
            if space is None:
                violations.append(FieldViolation(
                    Input.REQUEST, "vector.index", "must be INDEX_IMAGES or INDEX_FACES"))
            elif len(given.vector) != self._dims[space]:
                violations.append(FieldViolation(
                    Input.REQUEST, "vector.values",
                    f"must have {self._dims[space]} values for the {space.value} index, "
                    f"has {len(given.vector)}"))
            elif not np.all(np.isfinite(given.vector)) or not any(given.vector):
                violations.append(FieldViolation(
                    Input.REQUEST, "vector.values", "must be finite and not all zeros"))
        elif given.similar_to_id is not None:
            if (not 1 <= len(given.similar_to_id) <= MAX_IMAGE_ID_CHARS
                    or not given.similar_to_id.isprintable()):
                violations.append(FieldViolation(
                    Input.REQUEST, "similar_to_id",
                    f"must be 1 to {MAX_IMAGE_ID_CHARS} printable characters"))
        elif given.browses and not given.filters.selects():
            violations.append(FieldViolation(
                Input.REQUEST, "query", "set one of text, image, face_image, vector or "
                "similar_to_id, or a filter (labels, metadata, ranges, person_ids) to browse"))

    async def _ranked(self, tenant: str, given: SearchInput, filters: Filters, limit: int,
                      request_id: str, timeout_s: float | None) -> list[SearchHit]:
        if given.text is not None:
            return await self._text(tenant, given.text, filters, limit)
        if given.image is not None:
            embedded = await self._embedding.embed(
                given.image, EmbedOptionsInput(ModelRef("")), request_id, timeout_s)
            return await self._knn(tenant, Space.IMAGES, embedded.embedding, filters, limit,
                                   given.min_score)
        if given.face_image is not None:
            found = await self._faces.detect_faces(
                given.face_image, FaceOptionsInput(ModelRef(""), include_embeddings=True),
                request_id, timeout_s)
            faces = [f for f in found.faces if f.embedding is not None]
            if not faces:
                raise InvalidArgumentError.one("NO_FACE", Input.IMAGE, "",
                                               "no face was found in the query image")
            largest = max(faces, key=lambda f: (f.box.x_max - f.box.x_min)
                          * (f.box.y_max - f.box.y_min))
            assert largest.embedding is not None
            return await self._knn(tenant, Space.FACES, largest.embedding, filters, limit,
                                   given.min_score)
        if given.similar_to_id is not None:
            stored = await self._store.get(tenant, given.similar_to_id)
            if stored is None or stored.embedding is None:
                raise NotFoundError("image", given.similar_to_id, "similar_to_id")
            return await self._knn(
                tenant, Space.IMAGES, stored.embedding,
                replace(filters, exclude_ids=filters.exclude_ids | {given.similar_to_id}),
                limit, given.min_score)
        assert given.vector is not None and given.vector_index is not None
        return await self._knn(tenant, SPACES[given.vector_index], given.vector, filters, limit,
                               given.min_score)

    async def _browse(self, tenant: str, given: SearchInput, filters: Filters, offset: int,
                      page_size: int) -> SearchPage:
        """Every image the filters match, newest first: the store pages by offset itself, so
        browsing is bound only by the store's largest offset, not by MAX_K."""
        if offset > MAX_OFFSET:
            raise InvalidArgumentError.one(
                "INVALID_ARGUMENT", Input.REQUEST, "page_token",
                f"browsing stops after {MAX_OFFSET} images; narrow the filters")
        found = await self._store.browse(tenant, filters, page_size + 1, offset)
        page = tuple(SearchHit(hit.image_id, 0.0, (), ()) for hit in found[:page_size])
        more = len(found) > page_size and offset + page_size <= MAX_OFFSET
        return SearchPage(page, _token(offset + page_size, given) if more else "")

    async def _knn(self, tenant: str, space: Space, vector: tuple[float, ...] | npt.NDArray[Any],
                   filters: Filters, limit: int, min_score: float | None = None
                   ) -> list[SearchHit]:
        query = np.asarray(vector, dtype=np.float32)
        # Faces: several faces of one image may be near; fetch more, keep each image's best.
        fetch = min(MAX_K, limit * 3) if space is Space.FACES else limit
        hits = await self._store.knn(tenant, space, query, fetch, filters, min_score=min_score)
        kind = IndexKind.IMAGES if space is Space.IMAGES else IndexKind.FACES
        best: dict[str, SearchHit] = {}
        for hit in hits:
            if hit.image_id not in best:
                best[hit.image_id] = SearchHit(hit.image_id, hit.score, (kind,),
                                               (_vector_match(kind, hit),))
        return list(best.values())[:limit]

    async def _text(self, tenant: str, text: str, filters: Filters,
                    limit: int) -> list[SearchHit]:
        lists: dict[IndexKind, tuple[TextHit, ...]] = {}
        for kind in TEXT_INDEXES:
            if filters.allows(kind):
                lists[kind] = await self._store.search_text(
                    tenant, text, limit, _only(filters, kind))
        return fuse(lists)[:limit]


def fuse(lists: dict[IndexKind, tuple[TextHit, ...]]) -> list[SearchHit]:
    """Reciprocal-rank fusion: score = Σ 1 / (RRF_K + rank) over the lists an image is in;
    ties broken by image id so that pages are stable."""
    scores: dict[str, float] = {}
    ranks: dict[str, list[tuple[int, IndexKind]]] = {}
    matches: dict[str, list[HitMatch]] = {}
    for kind, hits in lists.items():
        for rank, hit in enumerate(hits, start=1):
            scores[hit.image_id] = scores.get(hit.image_id, 0.0) + 1.0 / (RRF_K + rank)
            ranks.setdefault(hit.image_id, []).append((rank, kind))
            matches.setdefault(hit.image_id, []).extend(
                HitMatch(kind, m.index, m.text, m.box) for m in hit.matches)
    order = sorted(scores, key=lambda image_id: (-scores[image_id], image_id))
    return [SearchHit(image_id, scores[image_id],
                      tuple(kind for _, kind in sorted(ranks[image_id], key=lambda r: r[0])),
                      tuple(matches[image_id]))
            for image_id in order]


def _vector_match(kind: IndexKind, hit: VectorHit) -> HitMatch:
    return HitMatch(kind, hit.face_index if hit.face_index is not None else -1, box=hit.box)


def _only(filters: Filters, kind: IndexKind) -> Filters:
    return replace(filters, indexes=frozenset({kind}))


def _check_min_score(given: SearchInput, violations: list[FieldViolation]) -> None:
    if given.min_score is None:
        return
    if given.text is not None or given.browses:
        violations.append(FieldViolation(
            Input.REQUEST, "min_score", "applies to image, face_image, vector and similar_to_id "
            "queries only: text and browse scores are not similarities"))
    elif not -1.0 <= given.min_score <= 1.0:  # also refuses NaN
        violations.append(FieldViolation(Input.REQUEST, "min_score",
                                         "must be a cosine similarity in [-1, 1]"))


def _filters(given: FiltersInput, violations: list[FieldViolation]) -> Filters:
    ranges = []
    for i, bound in enumerate(given.ranges):
        path = f"filters.ranges[{i}]"
        if not bound.key:
            violations.append(FieldViolation(Input.REQUEST, f"{path}.key", "required"))
        if not bound.gte and not bound.lte:
            violations.append(FieldViolation(Input.REQUEST, path, "needs gte, lte or both"))
        values: list[float | str | None] = []
        for side, value in (("gte", bound.gte), ("lte", bound.lte)):
            if not value:
                values.append(None)
            elif bound.numeric:
                try:
                    number = float(value)
                except ValueError:
                    number = float("nan")
                if not np.isfinite(number):
                    violations.append(FieldViolation(
                        Input.REQUEST, f"{path}.{side}", "must be a decimal number"))
                values.append(number)
            else:
                values.append(value)
        ranges.append(MetadataRange(bound.key, values[0], values[1]))
    if len(given.person_ids) > MAX_PERSON_IDS:
        violations.append(FieldViolation(Input.REQUEST, "filters.person_ids",
                                         f"at most {MAX_PERSON_IDS} ids"))
    for i, person_id in enumerate(given.person_ids):
        if not 1 <= len(person_id) <= MAX_IMAGE_ID_CHARS or not person_id.isprintable():
            violations.append(FieldViolation(
                Input.REQUEST, f"filters.person_ids[{i}]",
                f"must be 1 to {MAX_IMAGE_ID_CHARS} printable characters"))
    return Filters(labels=frozenset(given.labels), metadata=dict(given.metadata),
                   ranges=tuple(ranges), indexes=frozenset(given.indexes),
                   person_ids=frozenset(given.person_ids))


def _fingerprint(given: SearchInput) -> str:
    digest = hashlib.sha256()
    for part in (given.text, given.image, given.face_image, given.vector, given.vector_index,
                 given.similar_to_id, given.min_score, given.filters, given.page_size):
        digest.update(repr(part).encode() if not isinstance(part, bytes) else part)
        digest.update(b"\x00")
    return digest.hexdigest()[:16]


def _token(offset: int, given: SearchInput) -> str:
    raw = json.dumps({"offset": offset, "query": _fingerprint(given)}).encode()
    return base64.urlsafe_b64encode(raw).decode()


def _offset(given: SearchInput, violations: list[FieldViolation]) -> int:
    if not given.page_token:
        return 0
    try:
        decoded: Any = json.loads(base64.urlsafe_b64decode(given.page_token.encode()))
        offset, query = int(decoded["offset"]), str(decoded["query"])
    except (ValueError, KeyError, TypeError, binascii.Error):
        violations.append(FieldViolation(Input.REQUEST, "page_token",
                                         "not a token this service issued"))
        return 0
    if query != _fingerprint(given) or offset < 0:
        violations.append(FieldViolation(Input.REQUEST, "page_token",
                                         "was issued for a different query"))
        return 0
    return offset
