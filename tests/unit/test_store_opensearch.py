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

    handler: Handler = lambda call: existing_aliases(call)
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


async def connected(cluster: FakeCluster, ef_search: int = 1000) -> OpenSearchStore:
    return await OpenSearchStore.connect(
        "http://127.0.0.1:4607",
        index_prefix="vg",
        dims=DIMS,
        ef_search=ef_search,
        connection_class=cluster.connection_class(),
    )


VERSION = {"version": {"number": "2.19.1", "distribution": "opensearch"}}
PREFIX_CALLS = 6  # GET / (the version), then GET of each of the five aliases


def existing_aliases(call: Call) -> tuple[int, Any]:
    if (call.method, call.path) == ("GET", "/"):
        return 200, VERSION
    if call.method == "GET" and call.path.startswith("/_alias/"):
        name = call.path.removeprefix("/_alias/")
        return 200, {f"{name}-v2": {"aliases": {name: {"is_write_index": True}}}}
    return 200, {"errors": False, "items": []}


def empty_cluster(call: Call) -> tuple[int, Any]:
    if call.method == "GET" and call.path.startswith("/_alias/"):
        return 404, {"error": "alias missing", "status": 404}
    return existing_aliases(call)


async def test_connect_creates_each_index_behind_its_alias_with_lucene_hnsw() -> None:
    cluster = FakeCluster(empty_cluster)
    store = await connected(cluster)
    await store.close()
    assert [(c.method, c.path) for c in cluster.calls] == [
        ("GET", "/"),
        ("GET", "/_alias/vg-images"),
        ("PUT", "/vg-images-v2"),
        ("GET", "/_alias/vg-faces"),
        ("PUT", "/vg-faces-v2"),
        ("GET", "/_alias/vg-objects"),
        ("PUT", "/vg-objects-v2"),
        ("GET", "/_alias/vg-ocr"),
        ("PUT", "/vg-ocr-v2"),
        ("GET", "/_alias/vg-people"),
        ("PUT", "/vg-people-v2"),
    ]
    images = cluster.calls[2].body
    assert images["settings"]["index"] == {"knn": True}
    assert images["settings"]["analysis"]["tokenizer"]["trigram"]["min_gram"] == 3
    # The alias names its write index, so a -v3 can join it before -v2 leaves.
    assert images["aliases"] == {"vg-images": {"is_write_index": True}}
    assert cluster.calls[10].body["aliases"] == {"vg-people": {"is_write_index": True}}
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
    assert properties["ocr_text"] == {
        "type": "text", "fields": {"parts": {"type": "text", "analyzer": "word_parts"}}}
    assert properties["metadata"]["type"] == "nested"
    assert properties["record"] == {"type": "object", "enabled": False}
    faces = cluster.calls[4].body["mappings"]["properties"]
    assert faces["embedding"]["dimension"] == 2
    assert faces["embedding"]["method"]["engine"] == "lucene"
    assert {"kind", "position", "image_key", "label_names", "person_id"} <= faces.keys()


async def test_connect_leaves_existing_indexes_alone() -> None:
    cluster = FakeCluster(existing_aliases)
    store = await connected(cluster)
    await store.close()
    assert [c.method for c in cluster.calls] == ["GET"] * 6


async def test_connect_refuses_an_alias_of_an_older_index_version() -> None:
    def older(call: Call) -> tuple[int, Any]:
        if call.method == "GET" and call.path.startswith("/_alias/"):
            name = call.path.removeprefix("/_alias/")
            return 200, {f"{name}-v1": {"aliases": {name: {}}}}
        return existing_aliases(call)

    with pytest.raises(StoreError) as err:
        await connected(FakeCluster(older))
    assert "vg-images-v2: re-index first" in err.value.detail


async def test_upsert_bulk_indexes_every_document_then_deletes_stale_sub_documents() -> None:
    cluster = FakeCluster(existing_aliases)
    store = await connected(cluster)
    rng = np.random.default_rng(0)
    r = record("acme", "img-1", rng.random(4, dtype=np.float32),
               faces=[rng.random(2, dtype=np.float32)], objects=("dog", "cup"),
               ocr=("hello",), labels=("dog",), metadata={"year": "2021", "cam": "x"})  # fmt: skip
    await store.upsert(r)
    await store.close()
    bulk, stale = cluster.calls[PREFIX_CALLS:]
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
                "filter": [{"terms": {"image_key": [KEY]}}],
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
    assert search.params == {"preference": "acme"}
    assert search.body == {
        "size": 5,
        "from": 10,
        "query": {"knn": {"embedding": {
            "vector": [3.0, 4.0],
            "k": 1000,
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
            "method_parameters": {"ef_search": 1000},
        }}},
        "sort": [{"_score": {"order": "desc"}}, {"image_id": {"order": "asc"}},
                 {"position": {"order": "asc"}}],
        "track_scores": True,
        "_source": ["image_id", "position", "box", "person_id"],
    }  # fmt: skip
    assert [(h.image_id, h.face_index, h.box) for h in result] == [("b", 1, Box(1, 2, 3, 4))]
    assert result[0].score == pytest.approx(0.8)


def test_lucene_cosine_scores_map_back_to_cosine_similarity() -> None:
    # score = (2 - d) / 2 with d = 1 - cos: identical -> 1, orthogonal -> 0.5, opposite -> 0.
    assert [cosine_from_score(s) for s in (1.0, 0.5, 0.0)] == [1.0, 0.0, -1.0]


async def test_text_search_is_bm25_over_the_chosen_fields_and_reports_matches() -> None:
    r = record("acme", "img-1", None, ocr=("Total due", "Thanks"), labels=("receipt",))
    source = documents("vg", r)[0][2]
    hits = {"hits": {"total": {"value": 1, "relation": "eq"},
                     "hits": [{"_score": 3.5, "_source": source}]}}
    parts = {"hits": {"hits": [{"_score": 1.0, "_source": documents("vg", record(
        "acme", "img-2", None, ocr=("Subtotal",)))[0][2]}]}}

    def answer(call: Call) -> tuple[int, Any]:
        if not call.path.endswith("/_search"):
            return existing_aliases(call)
        return 200, parts if "must_not" in call.body["query"]["bool"] else hits

    cluster = FakeCluster(answer)
    store = await connected(cluster)
    only = Filters(indexes=frozenset({IndexKind.OCR, IndexKind.IMAGES}))
    result = await store.search_text("acme", "Total, receipt!", 3, only)
    await store.close()
    search, partial = cluster.calls[-2:]
    assert search.path == "/vg-images/_search"
    words = {"multi_match": {"query": "total receipt", "fields": ["ocr_text", "label_text"],
                             "type": "most_fields", "operator": "or"}}  # fmt: skip
    tenant = {"bool": {"filter": [{"term": {"tenant": "acme"}}]}}
    assert search.body["query"] == {"bool": {"must": [words], "filter": [tenant]}}
    assert search.body["track_total_hits"] is True
    # The one whole-word hit is fewer than k=3: images matched by parts of words follow.
    assert partial.body["query"] == {"bool": {
        "should": [{"match_phrase": {f"{field}.parts": term}}
                   for term in ("total", "receipt") for field in ("ocr_text", "label_text")],
        "minimum_should_match": 1,
        "must_not": [words],
        "filter": [tenant],
    }}  # fmt: skip
    assert (partial.body["size"], partial.body["from"]) == (2, 0)
    assert search.body["sort"] == [{"_score": {"order": "desc"}}, {"image_id": {"order": "asc"}}]
    assert search.body["_source"] == {"excludes": ["embedding"]}
    assert [(m.kind, m.index) for m in result[0].matches] == [
        (MatchKind.OCR_LINE, 0),
        (MatchKind.LABEL, 0),
    ]
    assert [(h.image_id, h.score) for h in result] == [("img-1", 3.5), ("img-2", -0.5)]
    assert [(m.kind, m.text) for m in result[1].matches] == [(MatchKind.OCR_LINE, "Subtotal")]


async def test_get_and_delete_of_a_missing_record() -> None:
    missing = {"_index": "vg-images-v1", "found": False}
    cluster = FakeCluster(
        lambda call: (404, missing) if "/_doc/" in call.path else existing_aliases(call)
    )
    store = await connected(cluster)
    assert await store.get("acme", "img-1") is None
    assert await store.delete("acme", "img-1") is False
    await store.close()
    get, delete, cleanup = cluster.calls[PREFIX_CALLS:]
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
    bulk, stale = cluster.calls[PREFIX_CALLS:]
    assert [line["index"]["_id"] for line in bulk.body[::2]] == [
        doc_key("acme", "a"),
        f"{doc_key('acme', 'a')}-l0",
        doc_key("acme", "b"),
    ]
    per_shape = stale.body["query"]["bool"]["should"]
    assert stale.body["query"]["bool"]["minimum_should_match"] == 1
    # One clause group per shape of counts (faces, objects, OCR lines): b (0, 0, 0), a (0, 0, 1).
    assert [q["bool"]["filter"] for q in per_shape] == [
        [{"terms": {"image_key": [doc_key("acme", "b")]}}],
        [{"terms": {"image_key": [doc_key("acme", "a")]}}],
    ]
    assert per_shape[1]["bool"]["should"][2]["bool"]["filter"][1] == {
        "range": {"position": {"gte": 1}}
    }


def leaf_clauses(query: Any) -> int:
    """Leaf queries as Lucene's max_clause_count counts them, each `terms` value as one."""
    if isinstance(query, list):
        return sum(leaf_clauses(q) for q in query)
    if "bool" in query:
        return sum(leaf_clauses(query["bool"].get(k, [])) for k in ("filter", "should", "must"))
    if "terms" in query:
        return sum(len(v) for v in query["terms"].values())
    return 1


async def test_stale_deletes_of_300_records_stay_within_lucenes_clause_limit() -> None:
    cluster = FakeCluster(existing_aliases)
    store = await connected(cluster)
    # 300 records, each with its own count of OCR lines: no two share a clause group.
    batch = [record("acme", f"img-{i}", None, ocr=("x",) * i) for i in range(300)]
    await store.upsert_many(batch)
    deletes = [c for c in cluster.calls if c.path.endswith("/_delete_by_query")]
    assert len(deletes) > 1
    assert all(leaf_clauses(c.body["query"]) <= 1024 for c in deletes)
    keys = [k for c in deletes for group in c.body["query"]["bool"]["should"]
            for k in group["bool"]["filter"][0]["terms"]["image_key"]]  # fmt: skip
    assert sorted(keys) == sorted(doc_key("acme", f"img-{i}") for i in range(300))
    # Like records share one group: 300 of them are one small request.
    cluster.calls.clear()
    await store.upsert_many([record("acme", f"same-{i}", None, ocr=("x",)) for i in range(300)])
    deletes = [c for c in cluster.calls if c.path.endswith("/_delete_by_query")]
    assert len(deletes) == 1 and leaf_clauses(deletes[0].body["query"]) == 306
    await store.close()


async def test_every_page_of_a_knn_query_searches_with_the_same_k() -> None:
    empty: dict[str, Any] = {"hits": {"hits": []}}
    cluster = FakeCluster(lambda call: (200, empty) if call.path.endswith("/_search")
                          else existing_aliases(call))  # fmt: skip
    store = await connected(cluster)
    query = np.array([1, 2, 3, 4], np.float32)
    for offset, k in ((0, 10), (10, 10), (20, 7), (990, 10), (995, 10)):
        await store.knn("acme", Space.IMAGES, query, k, offset=offset)
    await store.close()
    searches = [c.body for c in cluster.calls if c.path.endswith("/_search")]
    assert [(b["from"], b["size"]) for b in searches] == [
        (0, 10), (10, 10), (20, 7), (990, 10), (995, 10)]  # fmt: skip
    # One candidate set for every page within the first 1 000 hits, another one beyond.
    assert [b["query"]["knn"]["embedding"]["k"] for b in searches] == [1000] * 4 + [10000]


async def test_knn_floor_is_sent_as_lucenes_score_and_checked_on_the_cosine() -> None:
    # b passed Lucene's float32 floor but its cosine, 0.4998, is under 0.5.
    hits = {"hits": {"hits": [{"_score": 0.8, "_source": {"image_id": "a"}},
                              {"_score": 0.7499, "_source": {"image_id": "b"}}]}}  # fmt: skip
    cluster = FakeCluster(lambda call: (200, hits) if call.path.endswith("/_search")
                          else existing_aliases(call))  # fmt: skip
    store = await connected(cluster, ef_search=321)
    found = await store.knn("acme", Space.IMAGES, np.ones(4, np.float32), 5, min_score=0.5)
    await store.close()
    body = cluster.calls[-1].body
    assert body["min_score"] == 0.75  # (1 + cos) / 2 in the cosinesimil space
    assert body["query"]["knn"]["embedding"]["method_parameters"] == {"ef_search": 321}
    assert [(h.image_id, h.score) for h in found] == [("a", 0.6)]


async def test_the_slower_of_two_processes_creating_the_indexes_carries_on() -> None:
    def raced(call: Call) -> tuple[int, Any]:
        if call.method == "PUT":
            return 400, {"error": {"type": "resource_already_exists_exception",
                                   "reason": "index [vg-images-v2] already exists"},
                         "status": 400}  # fmt: skip
        return empty_cluster(call)

    cluster = FakeCluster(raced)
    store = await connected(cluster)
    await store.close()
    assert len([c for c in cluster.calls if c.method == "PUT"]) == 5

    def refused(call: Call) -> tuple[int, Any]:
        if call.method == "PUT":
            return 400, {"error": {"type": "mapper_parsing_exception", "reason": "bad"},
                         "status": 400}  # fmt: skip
        return empty_cluster(call)

    with pytest.raises(StoreError):
        await connected(FakeCluster(refused))


@pytest.mark.parametrize(("number", "accepted"), [
    ("2.11.1", False), ("2.15.0", False), ("2.16.0", True), ("3.1.0", True), ("", False)])
async def test_connect_checks_the_minimum_version(number: str, accepted: bool) -> None:
    def answer(call: Call) -> tuple[int, Any]:
        if (call.method, call.path) == ("GET", "/"):
            return 200, {"version": {"number": number}}
        return existing_aliases(call)

    if accepted:
        await (await connected(FakeCluster(answer))).close()
    else:
        with pytest.raises(StoreError) as err:
            await connected(FakeCluster(answer))
        assert "needs 2.16 or later" in err.value.detail
