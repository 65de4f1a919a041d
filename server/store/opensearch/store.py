"""The OpenSearch backend of the vector store (production; several server processes share it).

One index per kind (images, faces, objects, ocr), each created as `<prefix>-<kind>-v1` behind the
alias `<prefix>-<kind>` that every request names, so a re-index can build `-v2` and swap the
alias. Vectors are `knn_vector` fields, HNSW on the **Lucene** engine in the `cosinesimil` space:
Lucene applies a k-NN `filter` during the graph search and switches to exact search when the
filter is selective, so a filtered query returns k hits whenever k documents match (the same
promise as the embedded store). Faiss also filters efficiently since 2.9, but only Lucene does it
on every 2.x release and keeps no native-memory graph cache to size at our scale.
Docs: https://docs.opensearch.org/latest/vector-search/filter-search-knn/efficient-knn-filtering/
and https://docs.opensearch.org/latest/mappings/supported-field-types/knn-spaces/ .

Documents: documents.py; index mappings: mappings.py; query bodies: queries.py (pure functions,
checked by unit tests, since no OpenSearch engine can run on the development machines). This
module is the client wrapper: requests, error mapping, bulk retries.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from server.domain import StoreError, StoreUnavailableError
from server.store import text
from server.store.base import (
    NO_FILTERS,
    SPACE_KIND,
    Filters,
    ImageRecord,
    IndexKind,
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
    POSITION,
    SUB_KINDS,
    Json,
    alias,
    concrete_index,
    index_body,
)
from server.store.opensearch.queries import (
    TEXT_FIELDS,
    cosine_from_score,
    either,
    knn_body,
    stale_subdocs_query,
    text_body,
)

_log = logging.getLogger(__name__)

BULK_ATTEMPTS = 4
# Bulk items rejected with these statuses are retried (queue full, node busy or restarting).
_RETRYABLE = frozenset({429, 502, 503, 504})


class OpenSearchStore:
    """`VectorStore` over an OpenSearch cluster; `connect` creates the indexes where missing."""

    def __init__(self, client: Any, prefix: str, dims: Mapping[Space, int]) -> None:
        self._client = client
        self.prefix = prefix
        self.dims = dict(dims)

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
        connection_class: Any = None,
    ) -> OpenSearchStore:
        from opensearchpy import AsyncOpenSearch

        options: Json = {"verify_certs": verify_certs, "timeout": timeout_s}
        if username is not None:
            options["http_auth"] = (username, password or "")
        if connection_class is not None:
            options["connection_class"] = connection_class
        client = AsyncOpenSearch(hosts=[url], **options)
        store = cls(client, index_prefix, dims)
        try:
            await store.ensure_indexes()
        except BaseException:
            await client.close()
            raise
        return store

    async def _request(self, call: Any, **kwargs: Any) -> Any:
        """Run one client call, mapping transport failures onto the store's errors."""
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

    async def ensure_indexes(self) -> None:
        from opensearchpy.exceptions import RequestError

        for kind in IndexKind:
            if await self._request(
                self._client.indices.exists_alias, name=alias(self.prefix, kind)
            ):
                continue
            try:
                await self._request(
                    self._client.indices.create,
                    index=concrete_index(self.prefix, kind),
                    body=index_body(kind, self.prefix, self.dims),
                )
            except RequestError as exc:  # another process created it first
                if exc.error != "resource_already_exists_exception":
                    raise StoreError(f"creating {kind} index: {exc}") from exc

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
        stale = [
            stale_subdocs_query(
                doc_key(record.tenant, record.image_id),
                {
                    IndexKind.FACES: len(record.faces),
                    IndexKind.OBJECTS: len(record.objects),
                    IndexKind.OCR: len(record.ocr_lines),
                },
            )
            for record in batch
        ]
        await self._delete_subdocs(either(stale))

    async def _delete_subdocs(self, body: Json) -> None:
        await self._request(
            self._client.delete_by_query,
            index=",".join(alias(self.prefix, kind) for kind in SUB_KINDS),
            body=body,
            params={"refresh": "true", "conflicts": "proceed"},
        )

    async def delete(self, tenant: str, image_id: str) -> bool:
        from opensearchpy.exceptions import NotFoundError

        try:
            await self._request(
                self._client.delete,
                index=alias(self.prefix, IndexKind.IMAGES),
                id=doc_key(tenant, image_id),
                params={"refresh": "wait_for"},
            )
            existed = True
        except NotFoundError:
            existed = False
        await self._delete_subdocs(stale_subdocs_query(doc_key(tenant, image_id), {}))
        return existed

    async def get(self, tenant: str, image_id: str) -> ImageRecord | None:
        from opensearchpy.exceptions import NotFoundError

        try:
            response = await self._request(
                self._client.get,
                index=alias(self.prefix, IndexKind.IMAGES),
                id=doc_key(tenant, image_id),
            )
        except NotFoundError:
            return None
        source = response["_source"]
        if source.get("tenant") != tenant or source.get("image_id") != image_id:
            return None
        return record_from_source(source)

    async def knn(
        self,
        tenant: str,
        space: Space,
        vector: Vector,
        k: int,
        filters: Filters = NO_FILTERS,
        offset: int = 0,
    ) -> tuple[VectorHit, ...]:
        kind = SPACE_KIND[space]
        if not filters.allows(kind):
            return ()
        response = await self._request(
            self._client.search,
            index=alias(self.prefix, kind),
            body=knn_body(tenant, space, vector, k, filters, offset),
        )
        hits = []
        for hit in response["hits"]["hits"]:
            source = hit["_source"]
            faces = space is Space.FACES
            hits.append(
                VectorHit(
                    image_id=source["image_id"],
                    score=cosine_from_score(float(hit["_score"])),
                    space=space,
                    face_index=int(source[POSITION]) if faces else None,
                    box=unbox(source["box"]) if faces else None,
                )
            )
        return tuple(hits)

    async def search_text(
        self,
        tenant: str,
        query: str,
        k: int,
        filters: Filters = NO_FILTERS,
        offset: int = 0,
    ) -> tuple[TextHit, ...]:
        query_terms = text.terms(query)[: text.MAX_QUERY_TERMS]
        chosen = [kind for kind in TEXT_FIELDS if filters.allows(kind)]
        if not query_terms or not chosen:
            return ()
        fields = [TEXT_FIELDS[kind][0] for kind in chosen]
        match_kinds = frozenset(TEXT_FIELDS[kind][1] for kind in chosen)
        response = await self._request(
            self._client.search,
            index=alias(self.prefix, IndexKind.IMAGES),
            body=text_body(query_terms, fields, k, filters, tenant, offset),
        )
        return tuple(
            TextHit(
                hit["_source"]["image_id"],
                float(hit["_score"]),
                text.matches(record_from_source(hit["_source"]), query_terms, match_kinds),
            )
            for hit in response["hits"]["hits"]
        )

    async def count(self, tenant: str, kind: IndexKind) -> int:
        response = await self._request(
            self._client.count,
            index=alias(self.prefix, kind),
            body={"query": {"term": {"tenant": tenant}}},
        )
        return int(response["count"])

    async def close(self) -> None:
        await self._client.close()
