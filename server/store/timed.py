"""A VectorStore that times every operation of the store it wraps into
`vision_store_duration_seconds{operation}` (server/metrics.py), whichever backend that is."""

from __future__ import annotations

from collections.abc import Sequence

from server.metrics import time_store
from server.store.base import (
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
)


class TimedStore:
    def __init__(self, store: VectorStore) -> None:
        self._store = store

    async def upsert(self, record: ImageRecord) -> None:
        with time_store("upsert"):
            await self._store.upsert(record)

    async def upsert_many(self, records: Sequence[ImageRecord]) -> None:
        with time_store("upsert_many"):
            await self._store.upsert_many(records)

    async def delete(self, tenant: str, image_id: str) -> bool:
        with time_store("delete"):
            return await self._store.delete(tenant, image_id)

    async def get(self, tenant: str, image_id: str) -> ImageRecord | None:
        with time_store("get"):
            return await self._store.get(tenant, image_id)

    async def knn(self, tenant: str, space: Space, vector: Vector, k: int,
                  filters: Filters = NO_FILTERS, offset: int = 0,
                  min_score: float | None = None) -> tuple[VectorHit, ...]:
        with time_store("knn"):
            return await self._store.knn(tenant, space, vector, k, filters, offset, min_score)

    async def search_text(self, tenant: str, query: str, k: int, filters: Filters = NO_FILTERS,
                          offset: int = 0) -> tuple[TextHit, ...]:
        with time_store("search_text"):
            return await self._store.search_text(tenant, query, k, filters, offset)

    async def browse(self, tenant: str, filters: Filters, k: int,
                     offset: int = 0) -> tuple[BrowseHit, ...]:
        with time_store("browse"):
            return await self._store.browse(tenant, filters, k, offset)

    async def find_duplicate(self, tenant: str, content_sha256: str, embedding: Vector | None,
                             min_cosine: float, exclude_id: str) -> str | None:
        with time_store("find_duplicate"):
            return await self._store.find_duplicate(tenant, content_sha256, embedding,
                                                    min_cosine, exclude_id)  # fmt: skip

    async def list_people(self, tenant: str, k: int, offset: int = 0) -> tuple[Person, ...]:
        with time_store("list_people"):
            return await self._store.list_people(tenant, k, offset)

    async def get_person(self, tenant: str, person_id: str) -> Person | None:
        with time_store("get_person"):
            return await self._store.get_person(tenant, person_id)

    async def rename_person(self, tenant: str, person_id: str, name: str) -> Person | None:
        with time_store("rename_person"):
            return await self._store.rename_person(tenant, person_id, name)

    async def merge_people(self, tenant: str, person_ids: frozenset[str],
                           target_id: str) -> Person | None:
        with time_store("merge_people"):
            return await self._store.merge_people(tenant, person_ids, target_id)

    async def count(self, tenant: str, kind: IndexKind) -> int:
        with time_store("count"):
            return await self._store.count(tenant, kind)

    async def close(self) -> None:
        await self._store.close()
