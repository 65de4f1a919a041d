"""The OpenSearch backend: mappings.py (indexes and aliases) · documents.py (records as
documents) · queries.py (query bodies) · store.py (the client wrapper)."""

from server.store.opensearch.documents import bulk_lines, doc_key, documents, record_from_source
from server.store.opensearch.queries import cosine_from_score
from server.store.opensearch.store import OpenSearchStore

__all__ = [
    "OpenSearchStore",
    "bulk_lines",
    "cosine_from_score",
    "doc_key",
    "documents",
    "record_from_source",
]
