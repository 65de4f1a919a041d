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

The image document carries the whole record in `_source` (so `get` is one request) plus the
searchable fields: BM25 text fields for OCR text and label names, keyword fields for filters.
Each face, object and OCR line is its own document with a deterministic id (`<key>-f3`) and a
copy of the image's filter fields, so a re-ingest overwrites sub-documents in place and then
deletes the ones past the new counts: never duplicates, even when a step is retried.

The request bodies are built by the pure functions below; tests compare them with the documented
query DSL, since no OpenSearch engine can run on the development machines.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from server.domain import Box, StoreError, StoreUnavailableError
from server.store import text
from server.store.base import (
    NO_FILTERS,
    SPACE_KIND,
    FaceRecord,
    Filters,
    ImageRecord,
    IndexKind,
    Label,
    MatchKind,
    ObjectRecord,
    OcrLine,
    Space,
    TextHit,
    Vector,
    VectorHit,
    check_batch,
    check_image_id,
    check_query,
    check_record,
    check_tenant,
    check_vector,
    frozen_vector,
    metadata_number,
)

_log = logging.getLogger(__name__)

Json = dict[str, Any]

INDEX_VERSION = 1
BULK_ATTEMPTS = 4
# Bulk items rejected with these statuses are retried (queue full, node busy or restarting).
_RETRYABLE = frozenset({429, 502, 503, 504})

# The kinds stored as one document per sub-record, and the field holding its position.
_SUB_KINDS = (IndexKind.FACES, IndexKind.OBJECTS, IndexKind.OCR)
_POSITION = "position"

_TEXT_FIELDS = {
    IndexKind.OCR: ("ocr_text", MatchKind.OCR_LINE),
    IndexKind.IMAGES: ("label_text", MatchKind.LABEL),
    IndexKind.OBJECTS: ("object_text", MatchKind.OBJECT),
}

_HNSW = {"name": "hnsw", "space_type": "cosinesimil", "engine": "lucene",
         "parameters": {"m": 16, "ef_construction": 128}}  # fmt: skip


def alias(prefix: str, kind: IndexKind) -> str:
    return f"{prefix}-{kind.value}"


def concrete_index(prefix: str, kind: IndexKind) -> str:
    return f"{prefix}-{kind.value}-v{INDEX_VERSION}"


def doc_key(tenant: str, image_id: str) -> str:
    """The image document's _id: fixed length whatever the ids (an _id is at most 512 bytes)."""
    return hashlib.sha256(f"{len(tenant)}:{tenant}{image_id}".encode()).hexdigest()


def _filter_fields() -> Json:
    """Fields every document carries so any index can be filtered by tenant, labels, metadata."""
    return {
        "tenant": {"type": "keyword"},
        "image_id": {"type": "keyword"},
        "image_key": {"type": "keyword"},
        "created_at": {"type": "date"},
        "label_names": {"type": "keyword"},
        "metadata": {
            "type": "nested",
            "properties": {
                "key": {"type": "keyword"},
                "value": {"type": "keyword"},
                "num": {"type": "double"},
            },
        },
    }


def index_body(kind: IndexKind, prefix: str, dims: Mapping[Space, int]) -> Json:
    """The create-index request body: settings, mappings, and the alias requests go through."""
    properties = _filter_fields()
    stored = {"type": "object", "enabled": False}
    if kind is IndexKind.IMAGES:
        properties |= {
            "embedding": {"type": "knn_vector", "dimension": dims[Space.IMAGES], "method": _HNSW},
            "ocr_text": {"type": "text"},
            "label_text": {"type": "text"},
            "object_text": {"type": "text"},
            "record": stored,
        }
    else:
        properties |= {
            "kind": {"type": "keyword"},
            _POSITION: {"type": "integer"},
            "score": {"type": "float"},
            "box": stored,
        }
        if kind is IndexKind.FACES:
            properties["embedding"] = {
                "type": "knn_vector",
                "dimension": dims[Space.FACES],
                "method": _HNSW,
            }
        elif kind is IndexKind.OBJECTS:
            properties["label"] = {"type": "keyword", "fields": {"text": {"type": "text"}}}
        else:
            properties["text"] = {"type": "text"}
    return {
        "settings": {"index": {"knn": True}},
        "mappings": {"dynamic": "strict", "properties": properties},
        "aliases": {alias(prefix, kind): {}},
    }


def _box(box: Box) -> list[float]:
    return [box.x_min, box.y_min, box.x_max, box.y_max]


def _unbox(values: Sequence[float]) -> Box:
    return Box(*(float(v) for v in values))


def _metadata_entries(metadata: Mapping[str, str]) -> list[Json]:
    return [
        {"key": k, "value": v} | ({} if (n := metadata_number(v)) is None else {"num": n})
        for k, v in sorted(metadata.items())
    ]


def _vector_json(vector: Vector) -> list[float]:
    # float32 -> Python float is exact, and so is the way back: get() returns the same bits.
    return [float(x) for x in vector]


def documents(prefix: str, record: ImageRecord) -> list[tuple[str, str, Json]]:
    """(index alias, _id, source) of every document the record is stored as."""
    key = doc_key(record.tenant, record.image_id)
    common: Json = {
        "tenant": record.tenant,
        "image_id": record.image_id,
        "image_key": key,
        "created_at": record.created_at.isoformat(),
        "label_names": sorted({label.name for label in record.labels}),
        "metadata": _metadata_entries(record.metadata),
    }
    image: Json = common | {
        "ocr_text": record.ocr_text,
        "label_text": "\n".join(label.name for label in record.labels),
        "object_text": "\n".join(o.label for o in record.objects),
        "record": {
            "width": record.width,
            "height": record.height,
            "metadata": dict(record.metadata),
            "labels": [[label.name, label.score] for label in record.labels],
            "objects": [[o.label, o.score, _box(o.box)] for o in record.objects],
            "faces": [[f.score, _box(f.box), _vector_json(f.embedding)] for f in record.faces],
            "ocr_lines": [[li.text, li.confidence, _box(li.box)] for li in record.ocr_lines],
        },
    }
    if record.embedding is not None:
        image["embedding"] = _vector_json(record.embedding)
    docs = [(alias(prefix, IndexKind.IMAGES), key, image)]
    for i, face in enumerate(record.faces):
        source = common | {
            "kind": "faces",
            _POSITION: i,
            "score": face.score,
            "box": _box(face.box),
        }
        source["embedding"] = _vector_json(face.embedding)
        docs.append((alias(prefix, IndexKind.FACES), f"{key}-f{i}", source))
    for i, obj in enumerate(record.objects):
        source = common | {
            "kind": "objects",
            _POSITION: i,
            "score": obj.score,
            "box": _box(obj.box),
        }
        source["label"] = obj.label
        docs.append((alias(prefix, IndexKind.OBJECTS), f"{key}-o{i}", source))
    for i, line in enumerate(record.ocr_lines):
        source = common | {
            "kind": "ocr",
            _POSITION: i,
            "score": line.confidence,
            "box": _box(line.box),
        }
        source["text"] = line.text
        docs.append((alias(prefix, IndexKind.OCR), f"{key}-l{i}", source))
    return docs


def record_from_source(source: Mapping[str, Any]) -> ImageRecord:
    stored = source["record"]
    embedding = source.get("embedding")
    return ImageRecord(
        tenant=source["tenant"],
        image_id=source["image_id"],
        created_at=datetime.fromisoformat(source["created_at"]),
        width=stored["width"],
        height=stored["height"],
        metadata=stored["metadata"],
        embedding=None if embedding is None else frozen_vector(embedding),
        labels=tuple(Label(name, score) for name, score in stored["labels"]),
        objects=tuple(ObjectRecord(lb, s, _unbox(b)) for lb, s, b in stored["objects"]),
        faces=tuple(FaceRecord(_unbox(b), s, frozen_vector(e)) for s, b, e in stored["faces"]),
        ocr_lines=tuple(OcrLine(t, c, _unbox(b)) for t, c, b in stored["ocr_lines"]),
        ocr_text=source["ocr_text"],
    )


def bulk_lines(docs: Sequence[tuple[str, str, Json]]) -> list[Json]:
    """The `_bulk` body: an `index` action line then the document, per document."""
    lines: list[Json] = []
    for index, doc_id, source in docs:
        lines.append({"index": {"_index": index, "_id": doc_id}})
        lines.append(source)
    return lines


def stale_subdocs_query(key: str, counts: Mapping[IndexKind, int]) -> Json:
    """delete_by_query body for the image's sub-documents at or past the new count of their
    kind (all of them when the counts are zero): one query over the three sub-indexes."""
    return {
        "query": {
            "bool": {
                "filter": [{"term": {"image_key": key}}],
                "should": [
                    {
                        "bool": {
                            "filter": [
                                {"term": {"kind": kind.value}},
                                {"range": {_POSITION: {"gte": counts.get(kind, 0)}}},
                            ]
                        }
                    }
                    for kind in _SUB_KINDS
                ],
                "minimum_should_match": 1,
            }
        }
    }


def either(queries: Sequence[Json]) -> Json:
    """One delete_by_query body matching what any of the bodies matches."""
    if len(queries) == 1:
        return queries[0]
    return {"query": {"bool": {"should": [q["query"] for q in queries], "minimum_should_match": 1}}}


def filter_clauses(tenant: str, filters: Filters) -> list[Json]:
    """The tenant plus every filter as `bool.filter` clauses (no scoring, cacheable)."""
    clauses: list[Json] = [{"term": {"tenant": tenant}}]
    if filters.labels:
        clauses.append({"terms": {"label_names": sorted(filters.labels)}})
    for key, value in sorted(filters.metadata.items()):
        clauses.append(_nested_metadata({"term": {"metadata.key": key}},
                                        {"term": {"metadata.value": value}}))  # fmt: skip
    for bound in filters.ranges:
        field = "metadata.num" if bound.numeric else "metadata.value"
        limits = {name: b for name, b in (("gte", bound.gte), ("lte", bound.lte)) if b is not None}
        clauses.append(
            _nested_metadata({"term": {"metadata.key": bound.key}}, {"range": {field: limits}})
        )
    return clauses


def _nested_metadata(*conditions: Json) -> Json:
    return {"nested": {"path": "metadata", "query": {"bool": {"filter": list(conditions)}}}}


def knn_body(
    tenant: str, space: Space, vector: Vector, k: int, filters: Filters, offset: int
) -> Json:
    """A k-NN query with the filter inside the knn clause (efficient filtering): the graph
    search itself only visits matching documents, so k matching hits come back."""
    sort: list[Json] = [{"_score": {"order": "desc"}}, {"image_id": {"order": "asc"}}]
    if space is Space.FACES:
        sort.append({_POSITION: {"order": "asc"}})
    return {
        "size": k,
        "from": offset,
        "query": {
            "knn": {
                "embedding": {
                    "vector": _vector_json(vector),
                    "k": k + offset,
                    "filter": {"bool": {"filter": filter_clauses(tenant, filters)}},
                }
            }
        },
        "sort": sort,
        "track_scores": True,
        "_source": ["image_id", _POSITION, "box"],
    }


def text_body(query_terms: Sequence[str], fields: Sequence[str], k: int, filters: Filters,
              tenant: str, offset: int) -> Json:  # fmt: skip
    """BM25 over the chosen text fields, any term matching; ties by image id."""
    return {
        "size": k,
        "from": offset,
        "query": {
            "bool": {
                "must": [
                    {
                        "multi_match": {
                            "query": " ".join(query_terms),
                            "fields": list(fields),
                            "type": "most_fields",
                            "operator": "or",
                        }
                    }
                ],
                "filter": filter_clauses(tenant, filters),
            }
        },
        "sort": [{"_score": {"order": "desc"}}, {"image_id": {"order": "asc"}}],
        "track_scores": True,
        # The record (for which lines and labels matched) without the image's vector.
        "_source": {"excludes": ["embedding"]},
    }


def cosine_from_score(score: float) -> float:
    """Lucene's cosinesimil score is (2 - d) / 2 with d = 1 - cos (knn-spaces doc above)."""
    return 2.0 * score - 1.0


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
        check_record(record, self.dims)
        await self._write((record,))

    async def upsert_many(self, batch: Sequence[ImageRecord]) -> None:
        check_batch(batch, self.dims)
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
            index=",".join(alias(self.prefix, kind) for kind in _SUB_KINDS),
            body=body,
            params={"refresh": "true", "conflicts": "proceed"},
        )

    async def delete(self, tenant: str, image_id: str) -> bool:
        from opensearchpy.exceptions import NotFoundError

        check_tenant(tenant)
        check_image_id(image_id)
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

        check_tenant(tenant)
        check_image_id(image_id)
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
        check_tenant(tenant)
        space = Space(space)
        query = frozen_vector(vector)
        check_vector(query, self.dims[space], "vector")
        check_query(k, offset, filters)
        kind = SPACE_KIND[space]
        if not filters.allows(kind):
            return ()
        response = await self._request(
            self._client.search,
            index=alias(self.prefix, kind),
            body=knn_body(tenant, space, query, k, filters, offset),
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
                    face_index=int(source[_POSITION]) if faces else None,
                    box=_unbox(source["box"]) if faces else None,
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
        check_tenant(tenant)
        check_query(k, offset, filters)
        query_terms = text.terms(query)[: text.MAX_QUERY_TERMS]
        chosen = [kind for kind in _TEXT_FIELDS if filters.allows(kind)]
        if not query_terms or not chosen:
            return ()
        fields = [_TEXT_FIELDS[kind][0] for kind in chosen]
        match_kinds = frozenset(_TEXT_FIELDS[kind][1] for kind in chosen)
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
        check_tenant(tenant)
        response = await self._request(
            self._client.count,
            index=alias(self.prefix, IndexKind(kind)),
            body={"query": {"term": {"tenant": tenant}}},
        )
        return int(response["count"])

    async def close(self) -> None:
        await self._client.close()
