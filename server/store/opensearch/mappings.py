"""The OpenSearch indexes: their names, aliases, settings and mappings.

One index per kind (images, faces, objects, ocr), each created as `<prefix>-<kind>-v1` behind the
alias `<prefix>-<kind>` that every request names, so a re-index can build `-v2` and swap the
alias. Vectors are `knn_vector` fields, HNSW on the Lucene engine in the `cosinesimil` space.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from server.store.base import IndexKind, Space

Json = dict[str, Any]

INDEX_VERSION = 1

# The kinds stored as one document per sub-record, and the field holding its position.
SUB_KINDS = (IndexKind.FACES, IndexKind.OBJECTS, IndexKind.OCR)
POSITION = "position"

HNSW = {"name": "hnsw", "space_type": "cosinesimil", "engine": "lucene",
        "parameters": {"m": 16, "ef_construction": 128}}  # fmt: skip


def alias(prefix: str, kind: IndexKind) -> str:
    return f"{prefix}-{kind.value}"


def concrete_index(prefix: str, kind: IndexKind) -> str:
    return f"{prefix}-{kind.value}-v{INDEX_VERSION}"


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
            "embedding": {"type": "knn_vector", "dimension": dims[Space.IMAGES], "method": HNSW},
            "ocr_text": {"type": "text"},
            "label_text": {"type": "text"},
            "object_text": {"type": "text"},
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
        elif kind is IndexKind.OBJECTS:
            properties["label"] = {"type": "keyword", "fields": {"text": {"type": "text"}}}
        else:
            properties["text"] = {"type": "text"}
    return {
        "settings": {"index": {"knn": True}},
        "mappings": {"dynamic": "strict", "properties": properties},
        "aliases": {alias(prefix, kind): {}},
    }
