"""Vector store: where ingested images live and how search finds them.

One interface (`VectorStore`, base.py), two backends, each wrapped by `open_store` in
`CheckedStore` (checked.py), which checks every argument once:

- embedded (default; embedded/): one directory, no server. SQLite (WAL, synchronous=FULL,
  stdlib sqlite3) is the record of truth: records, metadata, an FTS5 table for OCR text and
  labels ranked with bm25(), and the exact float32 vectors as BLOBs. Beside it one usearch HNSW
  index per embedding space (images, faces) is a derived cache, saved by write-then-rename with
  the vector-table version it covers and caught up (or rebuilt) from SQLite at open. Several
  processes may open one directory: each one's caches follow the vectors table
  (embedded/changes.py).
- opensearch (production, a cluster shared by many servers; opensearch/): one index per kind
  behind aliases, `knn_vector` fields on the Lucene HNSW engine with efficient filtering,
  `_bulk` ingest.

Why the embedded store has this shape. SQLite with exact search alone kept every acknowledged
write through `kill -9` (an fsync per commit) and found the exact answer, but scanning every
vector is too slow to be the only search path at 100k vectors. An HNSW graph answers in well
under a millisecond, but its file alone lost rows when the process was killed: fast, so only
ever a cache of SQLite. LanceDB's IVF index never fsyncs, so it was not an option. So SQLite
holds every acknowledged write (an upsert returns after its commit is fsynced), HNSW answers
fast, and nothing is lost when the cache is. usearch has no filter predicate, so a filtered
query that matches few rows is answered exactly from SQLite and otherwise HNSW is over-fetched
and re-checked (embedded/planner.py); either way k hits come back whenever k matching vectors
exist. The store's measured latency, recall and insert rates: bench/report/store.md
(`python -m bench.store`).
"""

from __future__ import annotations

from collections.abc import Mapping

from server.domain import StoreError, StoreUnavailableError
from server.settings import StoreSettings
from server.store.base import (
    DEFAULT_FACE_DIM,
    DEFAULT_IMAGE_DIM,
    NO_FILTERS,
    BrowseHit,
    FaceRecord,
    Filters,
    ImageRecord,
    IndexKind,
    Label,
    MatchKind,
    MetadataRange,
    ObjectRecord,
    OcrLine,
    Person,
    Space,
    TextHit,
    TextMatch,
    Vector,
    VectorHit,
    VectorStore,
)
from server.store.checked import CheckedStore

# The store's configuration is the server's `store` settings block, one class for both.
StoreConfig = StoreSettings

__all__ = [
    "NO_FILTERS",
    "BrowseHit",
    "FaceRecord",
    "Filters",
    "ImageRecord",
    "IndexKind",
    "Label",
    "MatchKind",
    "MetadataRange",
    "ObjectRecord",
    "OcrLine",
    "Person",
    "Space",
    "StoreConfig",
    "StoreError",
    "StoreUnavailableError",
    "TextHit",
    "TextMatch",
    "Vector",
    "VectorHit",
    "VectorStore",
    "open_store",
]

DEFAULT_DIMS = {Space.IMAGES: DEFAULT_IMAGE_DIM, Space.FACES: DEFAULT_FACE_DIM}


async def open_store(
    config: StoreSettings, dims: Mapping[Space, int] = DEFAULT_DIMS
) -> VectorStore:
    """Open (and create where missing) the configured store, its arguments checked by
    `CheckedStore`; `dims`: each embedding space's dimension. Call inside the running loop."""
    backend: VectorStore
    if config.backend == "embedded":
        from server.store.embedded import EmbeddedOptions, EmbeddedStore

        backend = await EmbeddedStore.open(config.path, EmbeddedOptions(dims=dict(dims)))
    elif config.backend == "opensearch":
        from server.store.opensearch import OpenSearchStore

        backend = await OpenSearchStore.connect(
            config.url,
            index_prefix=config.index_prefix,
            dims=dict(dims),
            username=config.username,
            password=config.password,
            verify_certs=config.verify_certs,
            timeout_s=config.timeout_s,
            ef_search=config.ef_search,
        )
    else:
        raise ValueError(f"unknown store backend {config.backend!r}")
    return CheckedStore(backend, dims)
