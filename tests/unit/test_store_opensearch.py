"""The OpenSearch backend's requests, checked without a cluster.

The real `AsyncOpenSearch` client runs over a recording connection that answers like a cluster
would, so these tests see the exact method, path, parameters and body that would go on the wire,
and compare them with the k-NN query DSL documented at
https://docs.opensearch.org/latest/vector-search/filter-search-knn/efficient-knn-filtering/
(`query.knn.<field>.{vector, k, filter}`) and the knn_vector mapping at
https://docs.opensearch.org/latest/mappings/supported-field-types/knn-spaces/ .
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from opensearchpy._async.http_aiohttp import AsyncConnection

from server.domain import Box
from server.store import (
    Filters,
    IndexKind,
    MatchKind,
    MetadataRange,
    Space,
    StoreError,
    StoreUnavailableError,
)
from server.store.opensearch import (
    OpenSearchStore,
    bulk_lines,
    cosine_from_score,
    doc_key,
    documents,
    record_from_source,
)
from tests.contract.store_data import record

DIMS = {Space.IMAGES: 4, Space.FACES: 2}
KEY = doc_key("acme", "img-1")


@dataclass
class Call:
    method: str
    path: str
    params: dict[str, str]
    body: Any


Handler = Callable[[Call], tuple[int, Any]]


@dataclass
class FakeCluster:
    """Answers requests with `handler` (default: 200 {}) and records every one."""

    handler: Handler = lambda call: (200, {})
    calls: list[Call] = field(default_factory=list)

    def connection_class(self) -> type[AsyncConnection]:
        cluster = self

        class Recording(AsyncConnection):
            async def perform_request(
                self,
                method: str,
                url: str,
                params: Mapping[str, Any] | None = None,
                body: bytes | None = None,
                timeout: int | float | None = None,  # noqa: ASYNC109 (the client passes it)
                ignore: Collection[int] = (),
                headers: Mapping[str, str] | None = None,
            ) -> Any:
                text = (body or b"").decode()
                if text.endswith("\n") and "\n" in text[:-1]:
                    decoded: Any = [json.loads(line) for line in text.splitlines()]
                else:
                    decoded = json.loads(text) if text else None
                call = Call(method, url, {k: str(v) for k, v in (params or {}).items()}, decoded)
                cluster.calls.append(call)
                status, answer = cluster.handler(call)
                raw = json.dumps(answer)
                if not 200 <= status < 300 and status not in ignore:
                    self._raise_error(status, raw, "application/json")
                return status, {}, raw

            async def close(self) -> None:
                return None

        return Recording


async def connected(cluster: FakeCluster) -> OpenSearchStore:
    return await OpenSearchStore.connect(
        "http://127.0.0.1:4607",
        index_prefix="vg",
        dims=DIMS,
        connection_class=cluster.connection_class(),
    )


def existing_aliases(call: Call) -> tuple[int, Any]:
    return (200, {}) if call.method == "HEAD" else (200, {"errors": False, "items": []})


async def test_connect_creates_each_index_behind_its_alias_with_lucene_hnsw() -> None:
    cluster = FakeCluster(lambda call: (404, {}) if call.method == "HEAD" else (200, {}))
    store = await connected(cluster)
    await store.close()
    assert [(c.method, c.path) for c in cluster.calls] == [
        ("HEAD", "/_alias/vg-images"),
        ("PUT", "/vg-images-v1"),
        ("HEAD", "/_alias/vg-faces"),
        ("PUT", "/vg-faces-v1"),
        ("HEAD", "/_alias/vg-objects"),
        ("PUT", "/vg-objects-v1"),
        ("HEAD", "/_alias/vg-ocr"),
        ("PUT", "/vg-ocr-v1"),
    ]
    images = cluster.calls[1].body
    assert images["settings"] == {"index": {"knn": True}}
    assert images["aliases"] == {"vg-images": {}}
    properties = images["mappings"]["properties"]
    assert properties["embedding"] == {
        "type": "knn_vector",
        "dimension": 4,
        "method": {
            "name": "hnsw",
            "space_type": "cosinesimil",
            "engine": "lucene",
            "parameters": {"m": 16, "ef_construction": 128},
        },
    }
    assert properties["tenant"] == {"type": "keyword"}
    assert properties["ocr_text"] == {"type": "text"}
    assert properties["metadata"]["type"] == "nested"
    assert properties["record"] == {"type": "object", "enabled": False}
    faces = cluster.calls[3].body["mappings"]["properties"]
    assert faces["embedding"]["dimension"] == 2
    assert faces["embedding"]["method"]["engine"] == "lucene"
    assert {"kind", "position", "image_key", "label_names"} <= faces.keys()


async def test_connect_leaves_existing_indexes_alone() -> None:
    cluster = FakeCluster(existing_aliases)
    store = await connected(cluster)
    await store.close()
    assert [c.method for c in cluster.calls] == ["HEAD"] * 4


async def test_upsert_bulk_indexes_every_document_then_deletes_stale_sub_documents() -> None:
    cluster = FakeCluster(existing_aliases)
    store = await connected(cluster)
    rng = np.random.default_rng(0)
    r = record("acme", "img-1", rng.random(4, dtype=np.float32),
               faces=[rng.random(2, dtype=np.float32)], objects=("dog", "cup"),
               ocr=("hello",), labels=("dog",), metadata={"year": "2021", "cam": "x"})  # fmt: skip
    await store.upsert(r)
    await store.close()
    bulk, stale = cluster.calls[4:]
    assert (bulk.method, bulk.path, bulk.params) == ("POST", "/_bulk", {"refresh": "wait_for"})
    assert [line.get("index") for line in bulk.body[::2]] == [
        {"_index": "vg-images", "_id": KEY},
        {"_index": "vg-faces", "_id": f"{KEY}-f0"},
        {"_index": "vg-objects", "_id": f"{KEY}-o0"},
        {"_index": "vg-objects", "_id": f"{KEY}-o1"},
        {"_index": "vg-ocr", "_id": f"{KEY}-l0"},
    ]
    image = bulk.body[1]
    assert image["tenant"] == "acme" and image["image_key"] == KEY
    assert image["label_names"] == ["dog"]
    assert image["metadata"] == [
        {"key": "cam", "value": "x"},
        {"key": "year", "value": "2021", "num": 2021.0},
    ]
    assert image["embedding"] == [float(x) for x in r.embedding]  # type: ignore[union-attr]
    assert bulk.body[3]["embedding"] == [float(x) for x in r.faces[0].embedding]
    assert bulk.body[5] | {"box": None} == bulk.body[5] | {
        "kind": "objects", "position": 0, "label": "dog", "box": None}  # fmt: skip

    assert stale.method == "POST"
    assert stale.path == "/vg-faces,vg-objects,vg-ocr/_delete_by_query"
    assert stale.params == {"refresh": "true", "conflicts": "proceed"}
    assert stale.body == {
        "query": {
            "bool": {
                "filter": [{"term": {"image_key": KEY}}],
                "should": [
                    {"bool": {"filter": [{"term": {"kind": "faces"}},
                                         {"range": {"position": {"gte": 1}}}]}},
                    {"bool": {"filter": [{"term": {"kind": "objects"}},
                                         {"range": {"position": {"gte": 2}}}]}},
                    {"bool": {"filter": [{"term": {"kind": "ocr"}},
                                         {"range": {"position": {"gte": 1}}}]}},
                ],
                "minimum_should_match": 1,
            }
        }
    }  # fmt: skip


def test_a_stored_document_reads_back_as_the_same_record() -> None:
    rng = np.random.default_rng(1)
    r = record("acme", "img-1", rng.random(4, dtype=np.float32),
               faces=[rng.random(2, dtype=np.float32) for _ in range(2)], objects=("dog",),
               ocr=("a", "b"), labels=("dog", "puppy"), metadata={"k": "v"})  # fmt: skip
    # Through JSON and back, as the cluster stores _source.
    source = json.loads(json.dumps(documents("vg", r)[0][2]))
    assert record_from_source(source) == r
    assert bulk_lines(documents("vg", r))[0] == {"index": {"_index": "vg-images", "_id": KEY}}


async def test_bulk_retries_only_rejected_items_and_fails_on_a_bad_one() -> None:
    answers = iter(
        [
            {"errors": True, "items": [
                {"index": {"status": 201}},
                {"index": {"status": 429, "error": {"type": "es_rejected_execution_exception"}}},
            ]},
            {"errors": False, "items": [{"index": {"status": 201}}]},
        ]
    )  # fmt: skip
    cluster = FakeCluster(
        lambda call: (200, next(answers)) if call.path == "/_bulk" else existing_aliases(call)
    )
    store = await connected(cluster)
    r = record("acme", "img-1", None, faces=[np.ones(2, np.float32)])
    await store.upsert(r)
    bulks = [c for c in cluster.calls if c.path == "/_bulk"]
    assert len(bulks) == 2
    assert bulks[1].body == bulks[0].body[2:4]  # just the rejected face document

    bad = {"errors": True, "items": [{"index": {"status": 400, "error": {"type": "mapper"}}}]}
    cluster.handler = lambda call: (200, bad) if call.path == "/_bulk" else (200, {})
    with pytest.raises(StoreError):
        await store.upsert(record("acme", "img-2", None))
    await store.close()


async def test_bulk_gives_up_after_bounded_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    async def no_wait(_: float) -> None:
        return None

    monkeypatch.setattr("server.store.opensearch.store.asyncio.sleep", no_wait)
    busy = {"errors": True, "items": [{"index": {"status": 429}}]}
    cluster = FakeCluster(
        lambda call: (200, busy) if call.path == "/_bulk" else existing_aliases(call)
    )
    store = await connected(cluster)
    with pytest.raises(StoreUnavailableError):
        await store.upsert(record("acme", "img-1", None))
    assert len([c for c in cluster.calls if c.path == "/_bulk"]) == 4
    cluster.handler = lambda call: (503, {"error": "unavailable"})
    with pytest.raises(StoreUnavailableError):
        await store.count("acme", IndexKind.IMAGES)
    await store.close()


async def test_knn_puts_tenant_and_filters_inside_the_knn_clause() -> None:
    hits = {"hits": {"hits": [
        {"_score": 0.9, "_source": {"image_id": "b", "position": 1, "box": [1, 2, 3, 4]}},
    ]}}  # fmt: skip
    cluster = FakeCluster(
        lambda call: (200, hits) if call.path.endswith("/_search") else existing_aliases(call)
    )
    store = await connected(cluster)
    filters = Filters(
        labels=frozenset({"dog", "cat"}),
        metadata={"camera": "x100"},
        ranges=(MetadataRange("year", gte=2020), MetadataRange("city", lte="M")),
    )
    result = await store.knn("acme", Space.FACES, np.array([3, 4], np.float32), 5, filters, 10)
    await store.close()
    search = cluster.calls[-1]
    assert (search.method, search.path) == ("POST", "/vg-faces/_search")
    assert search.body == {
        "size": 5,
        "from": 10,
        "query": {"knn": {"embedding": {
            "vector": [3.0, 4.0],
            "k": 15,
            "filter": {"bool": {"filter": [
                {"term": {"tenant": "acme"}},
                {"terms": {"label_names": ["cat", "dog"]}},
                {"nested": {"path": "metadata", "query": {"bool": {"filter": [
                    {"term": {"metadata.key": "camera"}},
                    {"term": {"metadata.value": "x100"}}]}}}},
                {"nested": {"path": "metadata", "query": {"bool": {"filter": [
                    {"term": {"metadata.key": "year"}},
                    {"range": {"metadata.num": {"gte": 2020}}}]}}}},
                {"nested": {"path": "metadata", "query": {"bool": {"filter": [
                    {"term": {"metadata.key": "city"}},
                    {"range": {"metadata.value": {"lte": "M"}}}]}}}},
            ]}},
        }}},
        "sort": [{"_score": {"order": "desc"}}, {"image_id": {"order": "asc"}},
                 {"position": {"order": "asc"}}],
        "track_scores": True,
        "_source": ["image_id", "position", "box"],
    }  # fmt: skip
    assert [(h.image_id, h.face_index, h.box) for h in result] == [("b", 1, Box(1, 2, 3, 4))]
    assert result[0].score == pytest.approx(0.8)


def test_lucene_cosine_scores_map_back_to_cosine_similarity() -> None:
    # score = (2 - d) / 2 with d = 1 - cos: identical -> 1, orthogonal -> 0.5, opposite -> 0.
    assert [cosine_from_score(s) for s in (1.0, 0.5, 0.0)] == [1.0, 0.0, -1.0]


async def test_text_search_is_bm25_over_the_chosen_fields_and_reports_matches() -> None:
    r = record("acme", "img-1", None, ocr=("Total due", "Thanks"), labels=("receipt",))
    source = documents("vg", r)[0][2]
    hits = {"hits": {"hits": [{"_score": 3.5, "_source": source}]}}
    cluster = FakeCluster(
        lambda call: (200, hits) if call.path.endswith("/_search") else existing_aliases(call)
    )
    store = await connected(cluster)
    only = Filters(indexes=frozenset({IndexKind.OCR, IndexKind.IMAGES}))
    result = await store.search_text("acme", "Total, receipt!", 3, only)
    await store.close()
    search = cluster.calls[-1]
    assert search.path == "/vg-images/_search"
    assert search.body["query"] == {
        "bool": {
            "must": [{"multi_match": {"query": "total receipt",
                                      "fields": ["ocr_text", "label_text"],
                                      "type": "most_fields", "operator": "or"}}],
            "filter": [{"term": {"tenant": "acme"}}],
        }
    }  # fmt: skip
    assert search.body["sort"] == [{"_score": {"order": "desc"}}, {"image_id": {"order": "asc"}}]
    assert search.body["_source"] == {"excludes": ["embedding"]}
    assert [(m.kind, m.index) for m in result[0].matches] == [
        (MatchKind.OCR_LINE, 0),
        (MatchKind.LABEL, 0),
    ]
    assert result[0].score == 3.5


async def test_get_and_delete_of_a_missing_record() -> None:
    missing = {"_index": "vg-images-v1", "found": False}
    cluster = FakeCluster(
        lambda call: (404, missing) if call.method in ("GET", "DELETE") else existing_aliases(call)
    )
    store = await connected(cluster)
    assert await store.get("acme", "img-1") is None
    assert await store.delete("acme", "img-1") is False
    await store.close()
    get, delete, cleanup = cluster.calls[4:]
    assert (get.method, get.path) == ("GET", f"/vg-images/_doc/{KEY}")
    assert (delete.method, delete.path, delete.params) == (
        "DELETE", f"/vg-images/_doc/{KEY}", {"refresh": "wait_for"})  # fmt: skip
    assert cleanup.path == "/vg-faces,vg-objects,vg-ocr/_delete_by_query"
    assert cleanup.body["query"]["bool"]["should"][0]["bool"]["filter"][1] == {
        "range": {"position": {"gte": 0}}
    }


async def test_a_batch_is_one_bulk_and_one_delete_by_query() -> None:
    cluster = FakeCluster(existing_aliases)
    store = await connected(cluster)
    await store.upsert_many([record("acme", "a", None, ocr=("x",)), record("acme", "b", None)])
    await store.close()
    bulk, stale = cluster.calls[4:]
    assert [line["index"]["_id"] for line in bulk.body[::2]] == [
        doc_key("acme", "a"),
        f"{doc_key('acme', 'a')}-l0",
        doc_key("acme", "b"),
    ]
    per_record = stale.body["query"]["bool"]["should"]
    assert stale.body["query"]["bool"]["minimum_should_match"] == 1
    assert [q["bool"]["filter"] for q in per_record] == [
        [{"term": {"image_key": doc_key("acme", "a")}}],
        [{"term": {"image_key": doc_key("acme", "b")}}],
    ]
    assert per_record[0]["bool"]["should"][2]["bool"]["filter"][1] == {
        "range": {"position": {"gte": 1}}
    }
