"""The OpenSearch backend of the vector store (production; several server processes share it).

Needs OpenSearch 2.16 or later, checked at connect: 1280-d vectors on the Lucene engine need 2.12
(Lucene allowed 1 024 dimensions before), and k-NN's `method_parameters.ef_search` came in 2.16.
One index per kind behind an alias (mappings.py). Vectors are `knn_vector` fields, HNSW on the
**Lucene** engine in the `cosinesimil` space: Lucene applies a k-NN `filter` during the graph
search and switches to exact search when the filter is selective, so a filtered query returns k
hits whenever k documents match (the same promise as the embedded store), and it keeps no
native-memory graph cache to size at our scale.
Docs: https://docs.opensearch.org/latest/vector-search/filter-search-knn/efficient-knn-filtering/
and https://docs.opensearch.org/latest/mappings/supported-field-types/knn-spaces/ .

Documents: documents.py; index mappings: mappings.py; request bodies: queries.py (pure functions,
checked by unit tests against OpenSearch's API specification, since no OpenSearch engine can run
on the development machines). This module is the client wrapper: requests, error mapping, bulk
retries, the order of the requests each operation makes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from server.domain import StoreError, StoreUnavailableError
from server.store import text
from server.store.base import (
    NO_FILTERS,
    SPACE_KIND,
    BrowseHit,
    Filters,
    ImageRecord,
    IndexKind,
    Person,
    Space,
    TextHit,
    Vector,
    VectorHit,
)
from server.store.opensearch.documents import (
    bulk_lines,
    doc_key,
    documents,
    record_from_source,
    unbox,
)
from server.store.opensearch.mappings import (
    PEOPLE,
    POSITION,
    SUB_KINDS,
    Json,
    alias,
    concrete_index,
    index_body,
    people_index_body,
)
from server.store.opensearch.queries import (
    TEXT_FIELDS,
    browse_body,
    cosine_from_score,
    knn_body,
    merge_body,
    names_body,
    parts_body,
    people_body,
    same_bytes_body,
    stale_subdocs_queries,
    text_body,
)

_log = logging.getLogger(__name__)

BULK_ATTEMPTS = 4
# Bulk items rejected with these statuses are retried (queue full, node busy or restarting).
_RETRYABLE = frozenset({429, 502, 503, 504})
MIN_VERSION = (2, 16)
# Lucene searches max(k, ef_search) candidates; k is 1 000 on every page (queries.knn_window).
DEFAULT_EF_SEARCH = 1000


class OpenSearchStore:
    """`VectorStore` over an OpenSearch cluster; `connect` creates the indexes where missing."""

    def __init__(self, client: Any, prefix: str, dims: Mapping[Space, int],
                 ef_search: int = DEFAULT_EF_SEARCH) -> None:  # fmt: skip
        self._client = client
        self.prefix = prefix
        self.dims = dict(dims)
        self.ef_search = ef_search

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        index_prefix: str = "vision",
        dims: Mapping[Space, int],
        username: str | None = None,
        password: str | None = None,
        verify_certs: bool = True,
        timeout_s: float = 10.0,
        ef_search: int = DEFAULT_EF_SEARCH,
        connection_class: Any = None,
    ) -> OpenSearchStore:
        from opensearchpy import AsyncOpenSearch

        options: Json = {"verify_certs": verify_certs, "timeout": timeout_s}
        if username is not None:
            options["http_auth"] = (username, password or "")
        if connection_class is not None:
            options["connection_class"] = connection_class
        client = AsyncOpenSearch(hosts=[url], **options)
        store = cls(client, index_prefix, dims, ef_search)
        try:
            await store.check_version()
            await store.ensure_indexes()
        except BaseException:
            await client.close()
            raise
        return store

    async def _request(self, call: Any, **kwargs: Any) -> Any:
        """Run one client call, mapping transport failures onto the store's errors (the
        client's exception stays the `__cause__`)."""
        from opensearchpy.exceptions import ConnectionError as OSConnectionError
        from opensearchpy.exceptions import NotFoundError, TransportError

        try:
            return await call(**kwargs)
        except NotFoundError:
            raise
        except OSConnectionError as exc:
            raise StoreUnavailableError(f"opensearch unreachable: {exc}") from exc
        except TransportError as exc:
            if exc.status_code in _RETRYABLE:
                raise StoreUnavailableError(f"opensearch busy: {exc}") from exc
            raise StoreError(f"opensearch error: {exc}") from exc

    async def check_version(self) -> None:
        info = await self._request(self._client.info)
        number = str(info.get("version", {}).get("number", ""))
        found = tuple(int(part) for part in re.findall(r"\d+", number)[:2])
        if len(found) < 2 or found < MIN_VERSION:
            wanted = ".".join(map(str, MIN_VERSION))
            raise StoreError(f"OpenSearch {number or '(unknown version)'} is too old: the store "
                             f"needs {wanted} or later")  # fmt: skip

    async def ensure_indexes(self) -> None:
        """Create each index behind its alias where the alias is missing, and refuse an alias
        without this version's index behind it. Two processes starting on an empty cluster both
        try to create; the slower one's `resource_already_exists_exception` means it is there."""
        bodies: list[tuple[str, Json]] = [
            (kind.value, index_body(kind, self.prefix, self.dims)) for kind in IndexKind]
        bodies.append((PEOPLE, people_index_body(self.prefix)))
        from opensearchpy.exceptions import NotFoundError

        for name, body in bodies:
            try:
                behind = await self._request(self._client.indices.get_alias,
                                             name=alias(self.prefix, name))  # fmt: skip
            except NotFoundError:
                behind = {}
            if behind:
                # An older index's strict mapping would refuse today's fields at the first write.
                if concrete_index(self.prefix, name) not in behind:
                    raise StoreError(f"alias {alias(self.prefix, name)} names {sorted(behind)}, "
                                     f"not {concrete_index(self.prefix, name)}: re-index first "
                                     "(README, vector store)")  # fmt: skip
                continue
            try:
                await self._request(self._client.indices.create,
                                    index=concrete_index(self.prefix, name), body=body)  # fmt: skip
            except StoreError as exc:
                if _error_type(exc.__cause__) != "resource_already_exists_exception":
                    raise

    async def _bulk(self, lines: list[Json]) -> None:
        """Send `_bulk`, resending only the items rejected as retryable, a bounded number of
        times; any other rejected item fails the call."""
        pending = lines
        for attempt in range(BULK_ATTEMPTS):
            response = await self._request(
                self._client.bulk, body=pending, params={"refresh": "wait_for"}
            )
            if not response.get("errors"):
                return
            retry: list[Json] = []
            for i, item in enumerate(response["items"]):
                result = next(iter(item.values()))
                status = int(result.get("status", 500))
                if status < 300:
                    continue
                if status not in _RETRYABLE:
                    raise StoreError(f"bulk item rejected: {json.dumps(result.get('error'))}")
                retry.extend(pending[2 * i : 2 * i + 2])
            pending = retry
            if not pending:
                return
            _log.warning("bulk: %d items rejected as busy; retrying", len(pending) // 2)
            await asyncio.sleep(0.1 * 2**attempt)
        raise StoreUnavailableError(f"bulk: {len(pending) // 2} items still rejected")

    async def upsert(self, record: ImageRecord) -> None:
        await self._write((record,))

    async def upsert_many(self, batch: Sequence[ImageRecord]) -> None:
        await self._write(batch)

    async def _write(self, batch: Sequence[ImageRecord]) -> None:
        if not batch:
            return
        await self._bulk(bulk_lines([doc for r in batch for doc in documents(self.prefix, r)]))
        counts = {
            doc_key(r.tenant, r.image_id): {IndexKind.FACES: len(r.faces),
                                            IndexKind.OBJECTS: len(r.objects),
                                            IndexKind.OCR: len(r.ocr_lines)}
            for r in batch
        }  # fmt: skip
        for body in stale_subdocs_queries(counts):
            await self._delete_subdocs(body)

    async def _delete_subdocs(self, body: Json) -> None:
        await self._request(
            self._client.delete_by_query,
            index=",".join(alias(self.prefix, kind) for kind in SUB_KINDS),
            body=body,
            params={"refresh": "true", "conflicts": "proceed"},
        )

    async def delete(self, tenant: str, image_id: str) -> bool:
        from opensearchpy.exceptions import NotFoundError

        key = doc_key(tenant, image_id)
        try:
            await self._request(self._client.delete, index=alias(self.prefix, IndexKind.IMAGES),
                                id=key, params={"refresh": "wait_for"})  # fmt: skip
            existed = True
        except NotFoundError:
            existed = False
        for body in stale_subdocs_queries({key: {}}):
            await self._delete_subdocs(body)
        return existed

    async def get(self, tenant: str, image_id: str) -> ImageRecord | None:
        from opensearchpy.exceptions import NotFoundError

        try:
            response = await self._request(self._client.get,
                                           index=alias(self.prefix, IndexKind.IMAGES),
                                           id=doc_key(tenant, image_id))  # fmt: skip
        except NotFoundError:
            return None
        source = response["_source"]
        if source.get("tenant") != tenant or source.get("image_id") != image_id:
            return None
        return record_from_source(source)

    async def _search(self, name: str, tenant: str, body: Json) -> Any:
        # One tenant's pages go to the same shard copies: replicas hold different HNSW graphs,
        # and an approximate search could answer differently on each.
        return await self._request(self._client.search, index=alias(self.prefix, name),
                                   body=body, params={"preference": tenant})  # fmt: skip

    async def knn(self, tenant: str, space: Space, vector: Vector, k: int,
                  filters: Filters = NO_FILTERS, offset: int = 0,
                  min_score: float | None = None) -> tuple[VectorHit, ...]:  # fmt: skip
        kind = SPACE_KIND[space]
        if not filters.allows(kind):
            return ()
        body = knn_body(tenant, space, vector, k, filters, offset, min_score, self.ef_search)
        response = await self._search(kind.value, tenant, body)
        faces = space is Space.FACES
        hits = []
        for hit in response["hits"]["hits"]:
            source = hit["_source"]
            score = cosine_from_score(float(hit["_score"]))
            if min_score is not None and score < min_score:
                continue  # Lucene's float32 score passed the floor that the exact one misses
            hits.append(VectorHit(
                image_id=source["image_id"], score=score, space=space,
                face_index=int(source[POSITION]) if faces else None,
                box=unbox(source["box"]) if faces else None,
                person_id=source.get("person_id", "") if faces else "",
            ))  # fmt: skip
        return tuple(hits)

    async def search_text(self, tenant: str, query: str, k: int, filters: Filters = NO_FILTERS,
                          offset: int = 0) -> tuple[TextHit, ...]:  # fmt: skip
        query_terms = text.terms(query)[: text.MAX_QUERY_TERMS]
        chosen = [kind for kind in TEXT_FIELDS if filters.allows(kind)]
        if not query_terms or not chosen:
            return ()
        fields = [TEXT_FIELDS[kind][0] for kind in chosen]
        match_kinds = frozenset(TEXT_FIELDS[kind][1] for kind in chosen)
        whole = await self._search(IndexKind.IMAGES.value, tenant,
                                   text_body(query_terms, fields, k, filters, tenant, offset))
        found = [(hit, float(hit["_score"])) for hit in whole["hits"]["hits"]]
        parts = text.part_terms(query_terms)
        if len(found) < k and parts:
            # Part-only hits page on after every whole-word hit: their offset starts there.
            total = int(whole["hits"]["total"]["value"])
            body = parts_body(query_terms, parts, fields, k - len(found), filters, tenant,
                              max(0, offset - total))  # fmt: skip
            more = await self._search(IndexKind.IMAGES.value, tenant, body)
            found += [(hit, -1.0 / (1.0 + float(hit["_score"]))) for hit in more["hits"]["hits"]]
        return tuple(
            TextHit(hit["_source"]["image_id"], score,
                    text.matches(record_from_source(hit["_source"]), query_terms, match_kinds))
            for hit, score in found
        )  # fmt: skip

    async def browse(self, tenant: str, filters: Filters, k: int,
                     offset: int = 0) -> tuple[BrowseHit, ...]:  # fmt: skip
        response = await self._search(IndexKind.IMAGES.value, tenant,
                                      browse_body(tenant, filters, k, offset))  # fmt: skip
        return tuple(
            BrowseHit(hit["_source"]["image_id"],
                      datetime.fromisoformat(hit["_source"]["created_at"]).astimezone(UTC))
            for hit in response["hits"]["hits"]
        )  # fmt: skip

    async def find_duplicate(self, tenant: str, content_sha256: str, embedding: Vector | None,
                             min_cosine: float, exclude_id: str) -> str | None:  # fmt: skip
        if content_sha256:
            response = await self._search(IndexKind.IMAGES.value, tenant,
                                          same_bytes_body(tenant, content_sha256, exclude_id))
            if response["hits"]["hits"]:
                return str(response["hits"]["hits"][0]["_source"]["image_id"])
        if embedding is None:
            return None
        others = Filters(exclude_ids=frozenset({exclude_id}))
        nearest = await self.knn(tenant, Space.IMAGES, embedding, 1, others, 0, min_cosine)
        return nearest[0].image_id if nearest else None

    async def _people(self, tenant: str, size: int, person_ids: Sequence[str] = ()
                      ) -> list[Person]:  # fmt: skip
        response = await self._search(IndexKind.FACES.value, tenant,
                                      people_body(tenant, size, person_ids))  # fmt: skip
        buckets = response["aggregations"]["people"]["buckets"]
        ids = [str(b["key"]) for b in buckets]
        names: dict[str, str] = {}
        if ids:
            found = await self._search(PEOPLE, tenant, names_body(tenant, ids))
            names = {h["_source"]["person_id"]: h["_source"]["name"]
                     for h in found["hits"]["hits"]}  # fmt: skip
        people = []
        for bucket in buckets:
            cover = bucket["cover"]["hits"]["hits"][0]["_source"]
            people.append(Person(str(bucket["key"]), names.get(str(bucket["key"]), ""),
                                 int(bucket["doc_count"]), int(bucket["images"]["value"]),
                                 cover["image_id"], unbox(cover["box"])))  # fmt: skip
        return people

    async def list_people(self, tenant: str, k: int, offset: int = 0) -> tuple[Person, ...]:
        return tuple((await self._people(tenant, offset + k))[offset:])

    async def get_person(self, tenant: str, person_id: str) -> Person | None:
        found = await self._people(tenant, 1, [person_id])
        return found[0] if found else None

    async def rename_person(self, tenant: str, person_id: str, name: str) -> Person | None:
        if await self.get_person(tenant, person_id) is None:
            return None
        await self._request(self._client.index, index=alias(self.prefix, PEOPLE),
                            id=doc_key(tenant, person_id),
                            body={"tenant": tenant, "person_id": person_id, "name": name},
                            params={"refresh": "wait_for"})  # fmt: skip
        return await self.get_person(tenant, person_id)

    async def merge_people(self, tenant: str, person_ids: frozenset[str],
                           target_id: str) -> Person | None:  # fmt: skip
        if await self.get_person(tenant, target_id) is None:
            return None
        merged = sorted(person_ids)
        if merged:
            every = ",".join(alias(self.prefix, kind) for kind in IndexKind)
            await self._request(self._client.update_by_query, index=every,
                                body=merge_body(tenant, merged, target_id),
                                params={"refresh": "true"})  # fmt: skip
            await self._request(self._client.delete_by_query, index=alias(self.prefix, PEOPLE),
                                body={"query": names_body(tenant, merged)["query"]},
                                params={"refresh": "true", "conflicts": "proceed"})  # fmt: skip
        return await self.get_person(tenant, target_id)

    async def count(self, tenant: str, kind: IndexKind) -> int:
        response = await self._request(self._client.count, index=alias(self.prefix, kind),
                                       body={"query": {"term": {"tenant": tenant}}})  # fmt: skip
        return int(response["count"])

    async def close(self) -> None:
        await self._client.close()


def _error_type(exc: BaseException | None) -> str:
    """The OpenSearch error type of a client exception (`resource_already_exists_exception`)."""
    return str(getattr(exc, "error", ""))
