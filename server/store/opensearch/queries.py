"""The OpenSearch request bodies: k-NN with filters, full-text, browsing, duplicates, people,
and stale sub-document deletes.

Pure functions, so that unit tests can check every body (against OpenSearch's own API
specification too) without a cluster.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from server.store.base import MAX_K, MAX_OFFSET, Filters, IndexKind, MatchKind, Space, Vector
from server.store.opensearch.documents import vector_json
from server.store.opensearch.mappings import POSITION, SUB_KINDS, Json

TEXT_FIELDS = {
    IndexKind.OCR: ("ocr_text", MatchKind.OCR_LINE),
    IndexKind.IMAGES: ("label_text", MatchKind.LABEL),
    IndexKind.OBJECTS: ("object_text", MatchKind.OBJECT),
}

# Lucene refuses a query of more than indices.query.bool.max_clause_count (1 024 by default)
# clauses in all; a stale-document delete is split to stay within it.
MAX_CLAUSES = 1024


def knn_window(need: int) -> int:
    """The `k` of every page of one k-NN query: fixed, so that all pages rank one candidate set.

    On the Lucene engine `k` is the search's breadth: a `k` that grew with the page would make
    each page a different approximate search (and with a filter Lucene may search exactly for
    one page and approximately for the next), so pages could repeat and skip hits. Every page
    within the first MAX_K hits (all the search API serves) shares k = MAX_K; deeper pages,
    which only direct store callers reach, share the largest window.
    """
    return MAX_K if need <= MAX_K else MAX_K + MAX_OFFSET


def stale_subdocs_queries(counts: Mapping[str, Mapping[IndexKind, int]]) -> list[Json]:
    """delete_by_query bodies for each image's sub-documents at or past the new count of their
    kind (all of them when the counts are zero), keyed by image key.

    Images with equal counts share one `terms` clause, so a batch of like images costs a few
    clauses whatever its size; the groups are split over as many bodies as MAX_CLAUSES needs
    (a batch of 300 images with distinct counts would otherwise need about 2 100).
    """
    groups: dict[tuple[int, ...], list[str]] = {}
    for key, record_counts in counts.items():
        groups.setdefault(tuple(record_counts.get(kind, 0) for kind in SUB_KINDS), []).append(key)
    bodies: list[Json] = []
    pending: list[Json] = []
    used = 0
    for shape, keys in sorted(groups.items()):
        for start in range(0, len(keys), MAX_CLAUSES // 2):
            chunk = sorted(keys[start : start + MAX_CLAUSES // 2])
            group = _stale_group(chunk, shape)
            cost = clause_count(group)
            if pending and used + cost > MAX_CLAUSES:
                bodies.append(_any_of(pending))
                pending, used = [], 0
            pending.append(group)
            used += cost
    if pending:
        bodies.append(_any_of(pending))
    return bodies


def _stale_group(keys: Sequence[str], shape: Sequence[int]) -> Json:
    return {
        "bool": {
            "filter": [{"terms": {"image_key": list(keys)}}],
            "should": [
                {"bool": {"filter": [{"term": {"kind": kind.value}},
                                     {"range": {POSITION: {"gte": count}}}]}}
                for kind, count in zip(SUB_KINDS, shape, strict=True)
            ],
            "minimum_should_match": 1,
        }
    }  # fmt: skip


def _any_of(queries: Sequence[Json]) -> Json:
    if len(queries) == 1:
        return {"query": queries[0]}
    return {"query": {"bool": {"should": list(queries), "minimum_should_match": 1}}}


def clause_count(query: object) -> int:
    """Leaf queries in a query, counting each value of a `terms` query as one clause (Lucene
    rewrites a short `terms` into one clause per value): an upper bound of what Lucene counts."""
    if isinstance(query, list):
        return sum(clause_count(q) for q in query)
    if not isinstance(query, dict):
        return 0
    if "bool" in query:
        bool_query = query["bool"]
        return sum(clause_count(bool_query.get(part, []))
                   for part in ("must", "filter", "should", "must_not"))  # fmt: skip
    if "terms" in query:
        return max(1, *(len(v) for v in query["terms"].values() if isinstance(v, list)))
    if "nested" in query:
        return clause_count(query["nested"]["query"])
    return 1


def filter_query(tenant: str, filters: Filters, kind: IndexKind = IndexKind.IMAGES) -> Json:
    """The tenant plus every filter as a non-scoring `bool` query over an index of `kind`."""
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
    if filters.person_ids:
        # A face document is one face: its own person; any other document: the image's people.
        field = "person_id" if kind is IndexKind.FACES else "person_ids"
        clauses.append({"terms": {field: sorted(filters.person_ids)}})
    query: Json = {"filter": clauses}
    if filters.exclude_ids:
        query["must_not"] = [{"terms": {"image_id": sorted(filters.exclude_ids)}}]
    return {"bool": query}


def _nested_metadata(*conditions: Json) -> Json:
    return {"nested": {"path": "metadata", "query": {"bool": {"filter": list(conditions)}}}}


def knn_body(tenant: str, space: Space, vector: Vector, k: int, filters: Filters, offset: int,
             min_score: float | None, ef_search: int) -> Json:  # fmt: skip
    """A k-NN query with the filter inside the knn clause (efficient filtering: the graph
    search itself only visits matching documents, so k matching hits come back), `k` fixed by
    `knn_window`, and a floor on Lucene's score, (1 + cosine) / 2 in the cosinesimil space."""
    sort: list[Json] = [{"_score": {"order": "desc"}}, {"image_id": {"order": "asc"}}]
    source = ["image_id"]
    kind = IndexKind.IMAGES
    if space is Space.FACES:
        sort.append({POSITION: {"order": "asc"}})
        source += [POSITION, "box", "person_id"]
        kind = IndexKind.FACES
    body: Json = {
        "size": k,
        "from": offset,
        "query": {
            "knn": {
                "embedding": {
                    "vector": vector_json(vector),
                    "k": knn_window(offset + k),
                    "filter": filter_query(tenant, filters, kind),
                    "method_parameters": {"ef_search": ef_search},
                }
            }
        },
        "sort": sort,
        "track_scores": True,
        "_source": source,
    }
    if min_score is not None:
        body["min_score"] = score_from_cosine(min_score)
    return body


def text_body(query_terms: Sequence[str], fields: Sequence[str], k: int, filters: Filters,
              tenant: str, offset: int) -> Json:  # fmt: skip
    """BM25 over the chosen text fields, any term matching as a word; ties by image id. The
    total is counted exactly: the images matched only by parts of words page on after it."""
    return {
        "size": k,
        "from": offset,
        "query": {"bool": {"must": [_words(query_terms, fields)],
                           "filter": [filter_query(tenant, filters)]}},
        "sort": [{"_score": {"order": "desc"}}, {"image_id": {"order": "asc"}}],
        "track_scores": True,
        "track_total_hits": True,
        # The record (for which lines and labels matched) without the image's vector.
        "_source": {"excludes": ["embedding"]},
    }  # fmt: skip


def parts_body(query_terms: Sequence[str], parts: Sequence[str], fields: Sequence[str], k: int,
               filters: Filters, tenant: str, offset: int) -> Json:  # fmt: skip
    """The images where only parts of words match: any part (a term of 3 or more characters)
    as a phrase of its three-letter pieces in a `.parts` subfield, and no whole word."""
    return {
        "size": k,
        "from": offset,
        "query": {"bool": {
            "should": [{"match_phrase": {f"{field}.parts": part}}
                       for part in parts for field in fields],
            "minimum_should_match": 1,
            "must_not": [_words(query_terms, fields)],
            "filter": [filter_query(tenant, filters)],
        }},
        "sort": [{"_score": {"order": "desc"}}, {"image_id": {"order": "asc"}}],
        "track_scores": True,
        "_source": {"excludes": ["embedding"]},
    }  # fmt: skip


def _words(query_terms: Sequence[str], fields: Sequence[str]) -> Json:
    return {"multi_match": {"query": " ".join(query_terms), "fields": list(fields),
                            "type": "most_fields", "operator": "or"}}  # fmt: skip


def browse_body(tenant: str, filters: Filters, k: int, offset: int) -> Json:
    """Every matching image, newest first, ties by image id."""
    return {
        "size": k,
        "from": offset,
        "query": filter_query(tenant, filters),
        "sort": [{"created_us": {"order": "desc"}}, {"image_id": {"order": "asc"}}],
        "_source": ["image_id", "created_at"],
    }


def same_bytes_body(tenant: str, content_sha256: str, exclude_id: str) -> Json:
    """The earliest stored image with these bytes, other than `exclude_id`."""
    return {
        "size": 1,
        "query": {"bool": {
            "filter": [{"term": {"tenant": tenant}}, {"term": {"content_sha256": content_sha256}}],
            "must_not": [{"term": {"image_id": exclude_id}}],
        }},
        "sort": [{"created_us": {"order": "asc"}}, {"image_id": {"order": "asc"}}],
        "_source": ["image_id"],
    }  # fmt: skip


def people_body(tenant: str, size: int, person_ids: Sequence[str] = ()) -> Json:
    """Per person (of `person_ids`, or all): faces, images and the best face, most faces first,
    then by id; one aggregation over the tenant's face documents."""
    filters: list[Json] = [{"term": {"tenant": tenant}}]
    if person_ids:
        filters.append({"terms": {"person_id": list(person_ids)}})
    else:
        filters.append({"exists": {"field": "person_id"}})
    return {
        "size": 0,
        "query": {"bool": {"filter": filters, "must_not": [{"term": {"person_id": ""}}]}},
        "aggs": {"people": {
            "terms": {"field": "person_id", "size": size,
                      "order": [{"_count": "desc"}, {"_key": "asc"}]},
            "aggs": {
                # Exact below the threshold; a person is rarely in 40 000 images.
                "images": {"cardinality": {"field": "image_key", "precision_threshold": 40000}},
                "cover": {"top_hits": {
                    "size": 1,
                    "sort": [{"score": {"order": "desc"}}, {"image_id": {"order": "asc"}},
                             {POSITION: {"order": "asc"}}],
                    "_source": ["image_id", "box"],
                }},
            },
        }},
    }  # fmt: skip


def names_body(tenant: str, person_ids: Sequence[str]) -> Json:
    return {
        "size": len(person_ids),
        "query": {"bool": {"filter": [{"term": {"tenant": tenant}},
                                      {"terms": {"person_id": list(person_ids)}}]}},
    }  # fmt: skip


# Every document of an image keeps the image's person ids (`person_ids`, for filters); a face
# document its own (`person_id`); the image document its faces' in the stored record too.
_MERGE = """
def ids = new TreeSet();
for (def id : ctx._source.person_ids) { ids.add(params.merged.contains(id) ? params.target : id); }
ctx._source.person_ids = new ArrayList(ids);
if (ctx._source.containsKey('person_id') && params.merged.contains(ctx._source.person_id)) {
  ctx._source.person_id = params.target;
}
if (ctx._source.containsKey('record')) {
  for (def face : ctx._source.record.faces) {
    if (params.merged.contains(face[3])) { face[3] = params.target; }
  }
}
"""


def merge_body(tenant: str, person_ids: Sequence[str], target_id: str) -> Json:
    """update_by_query over every document of the images with a face of `person_ids`: each
    person id among them now reads `target_id`."""
    return {
        "query": {"bool": {"filter": [{"term": {"tenant": tenant}},
                                      {"terms": {"person_ids": list(person_ids)}}]}},
        "script": {"lang": "painless", "source": _MERGE.strip(),
                   "params": {"merged": list(person_ids), "target": target_id}},
    }  # fmt: skip


def cosine_from_score(score: float) -> float:
    """Lucene's cosinesimil score is (2 - d) / 2 with d = 1 - cos (knn-spaces doc); rounded to
    six decimals like the embedded store's exact scores, which float32 scoring matches to
    about 1e-6."""
    return round(2.0 * score - 1.0, 6)


def score_from_cosine(cosine: float) -> float:
    return (1.0 + cosine) / 2.0
