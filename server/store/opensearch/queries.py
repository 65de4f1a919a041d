"""The OpenSearch query bodies: k-NN with filters, full-text, and stale sub-document deletes.

Pure functions, so that unit tests can check every body without a cluster.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from server.store.base import Filters, IndexKind, MatchKind, Space, Vector
from server.store.opensearch.documents import vector_json
from server.store.opensearch.mappings import POSITION, SUB_KINDS, Json

TEXT_FIELDS = {
    IndexKind.OCR: ("ocr_text", MatchKind.OCR_LINE),
    IndexKind.IMAGES: ("label_text", MatchKind.LABEL),
    IndexKind.OBJECTS: ("object_text", MatchKind.OBJECT),
}


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
                                {"range": {POSITION: {"gte": counts.get(kind, 0)}}},
                            ]
                        }
                    }
                    for kind in SUB_KINDS
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
        sort.append({POSITION: {"order": "asc"}})
    return {
        "size": k,
        "from": offset,
        "query": {
            "knn": {
                "embedding": {
                    "vector": vector_json(vector),
                    "k": k + offset,
                    "filter": {"bool": {"filter": filter_clauses(tenant, filters)}},
                }
            }
        },
        "sort": sort,
        "track_scores": True,
        "_source": ["image_id", POSITION, "box"],
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
