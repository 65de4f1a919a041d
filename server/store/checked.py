"""`CheckedStore`: every argument of every store call checked once, before any backend sees it.

`open_store` wraps each backend in it, so the backends trust their arguments: a tenant and an
image id within their limits, vectors of the space's dimension, finite and non-zero, read-only
float32, `Space` and `IndexKind` members, and k, offset and filters within the interface's
limits. Paths in the errors are relative to the store call's arguments; the pipeline checks what
a caller sends before it reaches the store, so these name programming errors more than bad
requests.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from server.domain import FieldViolation, Input, InvalidArgumentError
from server.store.base import (
    MAX_FILTER_IDS,
    MAX_IMAGE_ID_CHARS,
    MAX_K,
    MAX_METADATA_ENTRIES,
    MAX_METADATA_KEY_CHARS,
    MAX_METADATA_VALUE_CHARS,
    MAX_OFFSET,
    MAX_PERSON_ID_CHARS,
    MAX_PERSON_NAME_CHARS,
    MAX_TENANT_CHARS,
    NO_FILTERS,
    BrowseHit,
    Filters,
    ImageRecord,
    IndexKind,
    Person,
    Space,
    TextHit,
    Vector,
    VectorHit,
    VectorStore,
    frozen_vector,
)

_SHA256 = re.compile(r"[0-9a-f]{64}")


class CheckedStore:
    """A `VectorStore` that checks the arguments, then calls the backend it wraps."""

    def __init__(self, store: VectorStore, dims: Mapping[Space, int]) -> None:
        self._store = store
        self.dims = dict(dims)

    async def upsert(self, record: ImageRecord) -> None:
        check_record(record, self.dims)
        await self._store.upsert(record)

    async def upsert_many(self, records: Sequence[ImageRecord]) -> None:
        check_batch(records, self.dims)
        if records:
            await self._store.upsert_many(tuple(records))

    async def delete(self, tenant: str, image_id: str) -> bool:
        check_tenant(tenant)
        check_image_id(image_id)
        return await self._store.delete(tenant, image_id)

    async def get(self, tenant: str, image_id: str) -> ImageRecord | None:
        check_tenant(tenant)
        check_image_id(image_id)
        return await self._store.get(tenant, image_id)

    async def knn(self, tenant: str, space: Space, vector: Vector, k: int,
                  filters: Filters = NO_FILTERS, offset: int = 0,
                  min_score: float | None = None) -> tuple[VectorHit, ...]:
        check_tenant(tenant)
        space = Space(space)
        query = frozen_vector(vector)
        check_vector(query, self.dims[space], "vector")
        check_query(k, offset, filters)
        if min_score is not None:
            check_cosine(min_score, "min_score")
        return await self._store.knn(tenant, space, query, k, filters, offset, min_score)

    async def search_text(self, tenant: str, query: str, k: int, filters: Filters = NO_FILTERS,
                          offset: int = 0) -> tuple[TextHit, ...]:
        check_tenant(tenant)
        check_query(k, offset, filters)
        return await self._store.search_text(tenant, query, k, filters, offset)

    async def browse(self, tenant: str, filters: Filters, k: int,
                     offset: int = 0) -> tuple[BrowseHit, ...]:
        check_tenant(tenant)
        check_query(k, offset, filters)
        return await self._store.browse(tenant, filters, k, offset)

    async def find_duplicate(self, tenant: str, content_sha256: str, embedding: Vector | None,
                             min_cosine: float, exclude_id: str) -> str | None:
        check_tenant(tenant)
        check_sha256(content_sha256, "content_sha256")
        check_cosine(min_cosine, "min_cosine")
        check_image_id(exclude_id, "exclude_id")
        query = None
        if embedding is not None:
            query = frozen_vector(embedding)
            check_vector(query, self.dims[Space.IMAGES], "embedding")
        return await self._store.find_duplicate(tenant, content_sha256, query, min_cosine,
                                                exclude_id)  # fmt: skip

    async def list_people(self, tenant: str, k: int, offset: int = 0) -> tuple[Person, ...]:
        check_tenant(tenant)
        check_query(k, offset, NO_FILTERS)
        return await self._store.list_people(tenant, k, offset)

    async def get_person(self, tenant: str, person_id: str) -> Person | None:
        check_tenant(tenant)
        check_person_id(person_id, "person_id")
        return await self._store.get_person(tenant, person_id)

    async def rename_person(self, tenant: str, person_id: str, name: str) -> Person | None:
        check_tenant(tenant)
        check_person_id(person_id, "person_id")
        if len(name) > MAX_PERSON_NAME_CHARS:
            raise _bad("name", f"must be at most {MAX_PERSON_NAME_CHARS} characters")
        return await self._store.rename_person(tenant, person_id, name)

    async def merge_people(self, tenant: str, person_ids: frozenset[str],
                           target_id: str) -> Person | None:
        check_tenant(tenant)
        check_person_id(target_id, "target_id")
        check_ids(person_ids, "person_ids", check_person_id)
        return await self._store.merge_people(tenant, frozenset(person_ids) - {target_id},
                                              target_id)  # fmt: skip

    async def count(self, tenant: str, kind: IndexKind) -> int:
        check_tenant(tenant)
        return await self._store.count(tenant, IndexKind(kind))

    async def close(self) -> None:
        await self._store.close()


def check_tenant(tenant: str) -> None:
    if not tenant or len(tenant) > MAX_TENANT_CHARS:
        raise _bad("tenant", f"must be 1 to {MAX_TENANT_CHARS} characters")


def check_image_id(image_id: str, field_path: str = "image_id") -> None:
    if not image_id or len(image_id) > MAX_IMAGE_ID_CHARS:
        raise _bad(field_path, f"must be 1 to {MAX_IMAGE_ID_CHARS} characters")


def check_person_id(person_id: str, field_path: str) -> None:
    if not person_id or len(person_id) > MAX_PERSON_ID_CHARS:
        raise _bad(field_path, f"must be 1 to {MAX_PERSON_ID_CHARS} characters")


def check_ids(ids: frozenset[str], field_path: str, check: Callable[[str, str], None]) -> None:
    if len(ids) > MAX_FILTER_IDS:
        raise _bad(field_path, f"at most {MAX_FILTER_IDS} ids")
    for i, one in enumerate(sorted(ids)):
        check(one, f"{field_path}[{i}]")


def check_sha256(value: str, field_path: str) -> None:
    if value and _SHA256.fullmatch(value) is None:
        raise _bad(field_path, "must be empty or 64 lowercase hex digits")


def check_cosine(value: float, field_path: str) -> None:
    if not -1.0 <= value <= 1.0:  # also refuses NaN
        raise _bad(field_path, "must be a cosine similarity in [-1, 1]")


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
        if face.person_id:
            check_person_id(face.person_id, f"faces[{i}].person_id")
    check_sha256(record.content_sha256, "content_sha256")
    if record.duplicate_of:
        check_image_id(record.duplicate_of, "duplicate_of")
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
    check_ids(filters.person_ids, "filters.person_ids", check_person_id)
    check_ids(filters.exclude_ids, "filters.exclude_ids", check_image_id)
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


def _bad(field_path: str, description: str) -> InvalidArgumentError:
    return InvalidArgumentError.one("INVALID_STORE_ARGUMENT", Input.REQUEST, field_path,
                                    description)
