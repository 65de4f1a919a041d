"""Vector store: where ingested images live and how search finds them (DESIGN.md §4).

One interface (`VectorStore`, base.py), two backends:

- embedded (default): one directory, no server. SQLite (WAL, synchronous=FULL, stdlib sqlite3)
  is the record of truth: records, metadata, an FTS5 table for OCR text and labels ranked with
  bm25(), and the exact float32 vectors as BLOBs. Beside it one usearch HNSW index per embedding
  space (images, faces) is a derived cache, saved by write-then-rename with the vector-table
  version it covers and caught up (or rebuilt) from SQLite at open. Several processes may open
  one directory: each one's caches follow the vectors table (embedded.py says how).
- opensearch (production, a cluster shared by many servers): one index per kind behind aliases,
  `knn_vector` fields on the Lucene HNSW engine with efficient filtering, `_bulk` ingest.

Why the embedded store has this shape, from the measurements in DESIGN.md §4 (100k x 512-d
clustered vectors, 2 cores, k=10, filtered on kind):

- SQLite + sqlite-vec + FTS5, exact: 6/6 writes survived `kill -9` (an fsync per commit), recall
  1.0, but 75 ms (50 ms filtered) per query: correct, too slow to be the only search path.
- usearch HNSW (f16) beside SQLite: 0.26 / 0.29 ms at recall@10 0.999 / 1.0, but the index file
  alone lost rows in 5 of 6 kills: fast, so only ever a cache of SQLite.
- LanceDB IVF_HNSW_SQ: 4.6 / 5.7 ms, recall 1.0, and no fsync at all: rejected.

So: SQLite holds every acknowledged write (an upsert returns after its commit is fsynced), HNSW
answers fast, and nothing is lost when the cache is. usearch has no filter predicate, so a
filtered query that matches few rows is answered exactly from SQLite (numpy over the matching
vectors), otherwise HNSW is over-fetched, each candidate re-checked against the tenant and
filters in SQLite, and the survivors re-scored exactly; an over-fetch that comes up short falls
back to the exact answer. Either way k hits come back whenever k matching vectors exist. The
exact scoring reads from SQLite only the candidates that the cache's in-memory f16 vectors,
within a known error of the exact cosine, cannot rule out of the top k.

This store as built, measured by `python -m bench.store` (bench/report/store.json; 100k clustered
vectors, k=10, 2 cores shared with other work): 1280-d unfiltered p50 2.1 ms at recall@10 0.998,
50 % filter 1.9 ms / 0.998, 1 % filter (exact path, 1 000 rows) 5.7 ms / 1.0; 128-d 1.1 ms,
1.5 ms, 3.3 ms at recall 1.0, 0.999, 1.0; batched inserts 1 340/s (1280-d), 3 800/s (128-d);
the per-k-NN catch-up check 3 µs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from server.domain import StoreError, StoreUnavailableError
from server.store.base import (
    DEFAULT_FACE_DIM,
    DEFAULT_IMAGE_DIM,
    NO_FILTERS,
    FaceRecord,
    Filters,
    ImageRecord,
    IndexKind,
    Label,
    MatchKind,
    MetadataRange,
    ObjectRecord,
    OcrLine,
    Space,
    TextHit,
    TextMatch,
    Vector,
    VectorHit,
    VectorStore,
)

__all__ = [
    "NO_FILTERS",
    "FaceRecord",
    "Filters",
    "ImageRecord",
    "IndexKind",
    "Label",
    "MatchKind",
    "MetadataRange",
    "ObjectRecord",
    "OcrLine",
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


def _default_dims() -> dict[Space, int]:
    return {Space.IMAGES: DEFAULT_IMAGE_DIM, Space.FACES: DEFAULT_FACE_DIM}


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """What `open_store` needs; the server's settings (`VISION_STORE__*`) map onto it.

    backend: "embedded" (path: the store directory) or "opensearch" (url, index_prefix,
    optional basic-auth username/password, verify_certs, request timeout).
    """

    backend: Literal["embedded", "opensearch"] = "embedded"
    path: str | os.PathLike[str] = "data/store"
    url: str = "http://127.0.0.1:4607"
    index_prefix: str = "vision"
    username: str | None = None
    password: str | None = None
    verify_certs: bool = True
    timeout_s: float = 10.0
    dims: Mapping[Space, int] = field(default_factory=_default_dims)


async def open_store(config: StoreConfig) -> VectorStore:
    """Open (and create where missing) the configured store; call inside the running loop."""
    if config.backend == "embedded":
        from server.store.embedded import EmbeddedOptions, EmbeddedStore

        return await EmbeddedStore.open(config.path, EmbeddedOptions(dims=dict(config.dims)))
    if config.backend == "opensearch":
        from server.store.opensearch import OpenSearchStore

        return await OpenSearchStore.connect(
            config.url,
            index_prefix=config.index_prefix,
            dims=dict(config.dims),
            username=config.username,
            password=config.password,
            verify_certs=config.verify_certs,
            timeout_s=config.timeout_s,
        )
    raise ValueError(f"unknown store backend {config.backend!r}")
