"""The OpenSearch indexes: their names, aliases, settings and mappings.

One index per kind (images, faces, objects, ocr) and one for person names, each created as
`<prefix>-<kind>-v2` behind the alias `<prefix>-<kind>` that every request names, the index
marked as the alias's write index: a re-index can then add `-v3` to the alias as the new write
index before removing the old one, and writes and single-document gets keep working meanwhile
(with two indexes behind an alias and none marked, OpenSearch refuses both). Vectors are
`knn_vector` fields, HNSW on the Lucene engine in the `cosinesimil` space, as in the engine's
own k-NN test stories (`index.knn: true`, `method.name: hnsw`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from server.store.base import IndexKind, Space

Json = dict[str, Any]

# 2: person ids, content hashes, created_us and the word-parts subfields (v1 lacks them, and
# its strict mapping would refuse the new fields: re-index into v2, see the README).
INDEX_VERSION = 2
# Not an IndexKind: person names, one document per (tenant, person id).
PEOPLE = "people"

# The kinds stored as one document per sub-record, and the field holding its position.
SUB_KINDS = (IndexKind.FACES, IndexKind.OBJECTS, IndexKind.OCR)
POSITION = "position"

HNSW = {"name": "hnsw", "space_type": "cosinesimil", "engine": "lucene",
        "parameters": {"m": 16, "ef_construction": 128}}  # fmt: skip


# Folded text in three-letter pieces (a term of 3+ letters then matches inside words, as a
# phrase of its pieces); the same pieces as the embedded store's trigram index.
_ANALYSIS = {
    "tokenizer": {"trigram": {"type": "ngram", "min_gram": 3, "max_gram": 3,
                              "token_chars": ["letter", "digit"]}},
    "analyzer": {"word_parts": {"type": "custom", "tokenizer": "trigram",
                                "filter": ["lowercase", "asciifolding"]}},
}  # fmt: skip


def alias(prefix: str, kind: IndexKind | str) -> str:
    return f"{prefix}-{kind}"


def concrete_index(prefix: str, kind: IndexKind | str) -> str:
    return f"{prefix}-{kind}-v{INDEX_VERSION}"


def _text_with_parts() -> Json:
    return {"type": "text", "fields": {"parts": {"type": "text", "analyzer": "word_parts"}}}


def people_index_body(prefix: str) -> Json:
    """The create-index body of the person names."""
    return {
        "mappings": {"dynamic": "strict", "properties": {
            "tenant": {"type": "keyword"},
            "person_id": {"type": "keyword"},
            "name": {"type": "keyword", "index": False},
        }},
        "aliases": {alias(prefix, PEOPLE): {"is_write_index": True}},
    }  # fmt: skip


def _filter_fields() -> Json:
    """Fields every document carries so any index can be filtered by tenant, labels, metadata."""
    return {
        "tenant": {"type": "keyword"},
        "image_id": {"type": "keyword"},
        "image_key": {"type": "keyword"},
        "created_at": {"type": "date"},
        # Microseconds since the epoch: `date` keeps milliseconds, and browsing sorts by it.
        "created_us": {"type": "long"},
        "label_names": {"type": "keyword"},
        "person_ids": {"type": "keyword"},
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
            "embedding": {"type": "knn_vector", "dimension": dims[Space.IMAGES], "method": HNSW},
            "ocr_text": _text_with_parts(),
            "label_text": _text_with_parts(),
            "object_text": _text_with_parts(),
            "content_sha256": {"type": "keyword"},
            "record": stored,
        }
    else:
        properties |= {
            "kind": {"type": "keyword"},
            POSITION: {"type": "integer"},
            "score": {"type": "float"},
            "box": stored,
        }
        if kind is IndexKind.FACES:
            properties["embedding"] = {
                "type": "knn_vector",
                "dimension": dims[Space.FACES],
                "method": HNSW,
            }
            properties["person_id"] = {"type": "keyword"}
        elif kind is IndexKind.OBJECTS:
            properties["label"] = {"type": "keyword", "fields": {"text": {"type": "text"}}}
        else:
            properties["text"] = {"type": "text"}
    settings: Json = {"index": {"knn": True}}
    if kind is IndexKind.IMAGES:
        settings["analysis"] = _ANALYSIS
    return {
        "settings": settings,
        "mappings": {"dynamic": "strict", "properties": properties},
        "aliases": {alias(prefix, kind): {"is_write_index": True}},
    }
