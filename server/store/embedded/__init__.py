"""The embedded store: one directory, SQLite as the truth, one HNSW cache per embedding space.

schema.py (the file, its migration, transactions) · records.py (whole-record writes and reads)
· filters.py (filters as SQL parts) · candidates.py (the k-NN candidate queries) · planner.py
(what a k-NN scores, and the exact ranking) · changes.py (following other processes' writes) ·
hnsw.py (the cache) · fulltext.py (FTS5) · store.py (threads, lifecycle, the async API).
"""

from server.store.embedded.store import EmbeddedOptions, EmbeddedStore

__all__ = ["EmbeddedOptions", "EmbeddedStore"]
