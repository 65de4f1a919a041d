"""Every request body the OpenSearch backend sends, validated against OpenSearch's own API
specification (tests/unit/opensearch_spec.py): index creation with mappings, bulk, k-NN search
with filters and a score floor, full-text and word-part searches, browsing, duplicates, people
(aggregation, names, rename, merge), delete-by-query and count.

The requests are the ones the real `AsyncOpenSearch` client puts on the wire, recorded by the
fake cluster of test_store_opensearch.py. One exception, by necessity: the specification's
`SortCombinations` is a `oneOf` whose options overlap (`{"image_id": {"order": "asc"}}` is both
a FieldWithOrder and, having one property, a SortOptions), so no object form can validate;
each sort is validated in its string form (the field names), and every other check stays.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest

from server.store import Filters, MetadataRange, Space
from tests.contract.store_data import record
from tests.unit import opensearch_spec
from tests.unit.test_store_opensearch import Call, FakeCluster, connected, empty_cluster

pytestmark = pytest.mark.skipif(not opensearch_spec.available(),
                                reason="the OpenSearch API specification is not beside the repo")


def _string_sorts(body: Any) -> Any:
    """The body with each `sort` in its string form (see the module docstring)."""
    if isinstance(body, list):
        return [_string_sorts(item) for item in body]
    if not isinstance(body, dict):
        return body
    converted = {key: _string_sorts(value) for key, value in body.items()}
    if isinstance(body.get("sort"), list):
        converted["sort"] = [next(iter(entry)) if isinstance(entry, dict) else entry
                             for entry in body["sort"]]  # fmt: skip
    return converted


def answer(call: Call) -> tuple[int, Any]:
    """Plausible answers, enough for every store operation to run to its end."""
    if call.path.endswith("/_search") and call.body.get("aggs"):
        bucket = {"key": "p-1", "doc_count": 2, "images": {"value": 2},
                  "cover": {"hits": {"hits": [{"_source": {"image_id": "a",
                                                           "box": [0, 0, 1, 1]}}]}}}
        return 200, {"hits": {"hits": []}, "aggregations": {"people": {"buckets": [bucket]}}}
    if call.path.endswith("/_search"):
        return 200, {"hits": {"total": {"value": 0, "relation": "eq"}, "hits": []}}
    if call.path.endswith("/_count"):
        return 200, {"count": 0}
    return empty_cluster(call)


async def every_request() -> list[Call]:
    cluster = FakeCluster(answer)
    store = await connected(cluster)
    rng = np.random.default_rng(0)
    full = record("acme", "img-1", rng.random(4, dtype=np.float32),
                  faces=[rng.random(2, dtype=np.float32)], people=("p-1",),
                  objects=("dog",), ocr=("Old Harbour",), labels=("dog",),
                  metadata={"year": "2021"}, content_sha256="ab" * 32)  # fmt: skip
    filters = Filters(labels=frozenset({"dog"}), metadata={"year": "2021"},
                      ranges=(MetadataRange("year", gte=2020), MetadataRange("city", lte="M")),
                      person_ids=frozenset({"p-1"}), exclude_ids=frozenset({"img-9"}))  # fmt: skip
    await store.upsert_many([full, record("acme", "img-2", None)])
    await store.knn("acme", Space.IMAGES, rng.random(4, dtype=np.float32), 10, filters, 20, 0.3)
    await store.knn("acme", Space.FACES, rng.random(2, dtype=np.float32), 5, filters)
    await store.search_text("acme", "old harbou", 10, filters)
    await store.browse("acme", filters, 10, 10)
    await store.find_duplicate("acme", "ab" * 32, rng.random(4, dtype=np.float32), 0.95, "img-3")
    await store.list_people("acme", 10)
    await store.rename_person("acme", "p-1", "Ann")
    await store.merge_people("acme", frozenset({"p-2"}), "p-1")
    await store.count("acme", Space.IMAGES)  # type: ignore[arg-type]
    await store.delete("acme", "img-1")
    await store.close()
    return cluster.calls


async def test_every_request_body_conforms_to_the_specification() -> None:
    calls = await every_request()
    sent = {(c.method, opensearch_spec.operation(c.method, c.path).template) for c in calls}
    assert {("PUT", "/{index}"), ("POST", "/_bulk"), ("POST", "/{index}/_search"),
            ("POST", "/{index}/_delete_by_query"), ("POST", "/{index}/_update_by_query"),
            ("PUT", "/{index}/_doc/{id}"), ("POST", "/{index}/_count")} <= sent  # fmt: skip
    for call in calls:
        problems = opensearch_spec.errors(call.method, call.path, _string_sorts(call.body))
        assert problems == [], f"{call.method} {call.path}: {problems}"


async def test_the_validator_rejects_what_the_specification_forbids() -> None:
    calls = await every_request()
    knn = next(c for c in calls if isinstance(c.body, dict) and "knn" in c.body.get("query", {}))
    wrong = copy.deepcopy(knn.body)
    wrong["query"]["knn"]["embedding"]["k"] = "ten"
    assert opensearch_spec.errors("POST", knn.path, _string_sorts(wrong))
    wrong = copy.deepcopy(knn.body)
    del wrong["query"]["knn"]["embedding"]["vector"]
    assert opensearch_spec.errors("POST", knn.path, _string_sorts(wrong))
    create = next(c for c in calls if c.method == "PUT" and c.path == "/vg-images-v2")
    wrong = copy.deepcopy(create.body)
    wrong["aliases"]["vg-images"]["is_write_index"] = "yes"
    assert opensearch_spec.errors("PUT", create.path, wrong)
    wrong = copy.deepcopy(create.body)
    wrong["mappings"]["properties"]["embedding"]["dimension"] = "four"
    assert opensearch_spec.errors("PUT", create.path, wrong)
    # The one exception: the object form of a sort cannot validate (its oneOf is ambiguous).
    assert opensearch_spec.errors("POST", knn.path, knn.body)
