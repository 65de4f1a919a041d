"""The embedded vector store: one directory, SQLite as the truth, one HNSW cache per space.

Writes run on one dedicated thread that owns the write connection (SQLite has one writer
anyway); reads run on a small pool of threads with a connection each (WAL lets them read while
the writer commits). The event loop only validates arguments and awaits.

One process owns a store directory at a time (an exclusive lock file): the HNSW caches live in
that process's memory, so several server processes need the OpenSearch backend instead.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import math
import os
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np

from server.domain import StoreError, StoreUnavailableError
from server.store import records, text
from server.store.base import (
    DEFAULT_FACE_DIM,
    DEFAULT_IMAGE_DIM,
    NO_FILTERS,
    SPACE_KIND,
    Filters,
    ImageRecord,
    IndexKind,
    MatchKind,
    Space,
    TextHit,
    Vector,
    VectorHit,
    check_batch,
    check_image_id,
    check_query,
    check_record,
    check_tenant,
    check_vector,
    frozen_vector,
)
from server.store.hnsw import HnswCache, HnswParams

_log = logging.getLogger(__name__)

_T = TypeVar("_T")

_MATCH_KINDS = {
    IndexKind.OCR: MatchKind.OCR_LINE,
    IndexKind.IMAGES: MatchKind.LABEL,
    IndexKind.OBJECTS: MatchKind.OBJECT,
}


def _default_dims() -> dict[Space, int]:
    return {Space.IMAGES: DEFAULT_IMAGE_DIM, Space.FACES: DEFAULT_FACE_DIM}


@dataclass(frozen=True, slots=True)
class EmbeddedOptions:
    """Tuning of the embedded store; the defaults are the ones bench/store.py measured.

    exact_threshold: a k-NN whose tenant and filters match at most this many vectors is answered
    exactly from SQLite (a few ms at 1280-d) instead of through the HNSW graph.
    max_fetch: the most HNSW candidates an over-fetching query asks for before it gives up and
    answers exactly. save_every: the cache is saved after this many vector changes (and at
    close); whatever a crash loses is caught up from SQLite at the next open.
    """

    dims: Mapping[Space, int] = field(default_factory=_default_dims)
    hnsw: HnswParams = HnswParams()
    exact_threshold: int = 2_000
    max_fetch: int = 8_192
    save_every: int = 50_000
    readers: int = 2


class EmbeddedStore:
    """`VectorStore` over a directory; create it with `await EmbeddedStore.open(path)`."""

    def __init__(self, path: Path, options: EmbeddedOptions) -> None:
        self.path = path
        self.options = options
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-write")
        self._readers = ThreadPoolExecutor(
            max_workers=options.readers, thread_name_prefix="store-read"
        )
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._write_conn: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._closed = False
        self.caches: dict[Space, HnswCache] = {}
        self._counts: dict[tuple[str, Space], int] = {}
        self._counts_lock = threading.Lock()

    @classmethod
    async def open(
        cls, path: str | os.PathLike[str], options: EmbeddedOptions | None = None
    ) -> EmbeddedStore:
        store = cls(Path(path), options or EmbeddedOptions())
        try:
            await store._call(store._writer, store._open_sync)
        except BaseException:
            await store.close()
            raise
        return store

    def _open_sync(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreUnavailableError(f"{self.path} is open in another process") from None
        self._lock_fd = fd
        conn = records.connect(self.path / "store.sqlite3")
        self._write_conn = conn
        records.create_schema(conn)
        self._counts = records.vector_counts(conn)
        for space in Space:
            cache = HnswCache(
                self.path / f"hnsw-{space.value}.usearch",
                space,
                self.options.dims[space],
                self.options.hnsw,
            )
            cache.open(conn)
            self.caches[space] = cache

    async def _call(self, pool: ThreadPoolExecutor, fn: Callable[..., _T], *args: object) -> _T:
        if self._closed:
            raise StoreUnavailableError("the store is closed")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(pool, fn, *args)
        except sqlite3.OperationalError as exc:
            raise StoreUnavailableError(str(exc)) from exc
        except sqlite3.Error as exc:
            raise StoreError(str(exc)) from exc

    def _read_conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = records.connect(self.path / "store.sqlite3")
            self._local.conn = conn
            with self._connections_lock:
                self._connections.append(conn)
        return conn

    # Writes -----------------------------------------------------------------------------------

    async def upsert(self, record: ImageRecord) -> None:
        check_record(record, self.options.dims)
        await self._call(self._writer, self._upsert_sync, (record,))

    async def upsert_many(self, batch: Sequence[ImageRecord]) -> None:
        check_batch(batch, self.options.dims)
        if batch:
            await self._call(self._writer, self._upsert_sync, tuple(batch))

    def _upsert_sync(self, batch: Sequence[ImageRecord]) -> None:
        assert self._write_conn is not None
        self._apply(records.upsert(self._write_conn, batch))

    async def delete(self, tenant: str, image_id: str) -> bool:
        check_tenant(tenant)
        check_image_id(image_id)
        return await self._call(self._writer, self._delete_sync, tenant, image_id)

    def _delete_sync(self, tenant: str, image_id: str) -> bool:
        assert self._write_conn is not None
        result = records.delete(self._write_conn, tenant, image_id)
        self._apply(result)
        return result.existed

    def _apply(self, result: records.WriteResult) -> None:
        """Mirror a committed write into the HNSW caches (runs on the writer thread)."""
        assert self._write_conn is not None
        with self._counts_lock:
            for row in result.removed:
                self._counts[(row.tenant, row.space)] -= 1
            for row, _ in result.added:
                key = (row.tenant, row.space)
                self._counts[key] = self._counts.get(key, 0) + 1
        for space, cache in self.caches.items():
            removed = [row.id for row in result.removed if row.space is space]
            added = [(row.id, vector) for row, vector in result.added if row.space is space]
            if not removed and not added:
                continue
            try:
                cache.apply(removed, added)
            except Exception:  # the write is committed; a cache that missed it is rebuilt
                _log.exception("hnsw %s update failed; rebuilding it from SQLite", space)
                cache.open(self._write_conn)
            if cache.changes_since_save >= self.options.save_every:
                try:
                    cache.save(records.space_version(self._write_conn, space))
                except OSError:  # the write itself is durable; the next open catches up
                    _log.exception("saving the hnsw %s cache failed", space)

    # Reads ------------------------------------------------------------------------------------

    async def get(self, tenant: str, image_id: str) -> ImageRecord | None:
        check_tenant(tenant)
        check_image_id(image_id)
        return await self._call(self._readers, self._get_sync, tenant, image_id)

    def _get_sync(self, tenant: str, image_id: str) -> ImageRecord | None:
        return records.get(self._read_conn(), tenant, image_id)

    async def count(self, tenant: str, kind: IndexKind) -> int:
        check_tenant(tenant)
        return await self._call(self._readers, self._count_sync, tenant, IndexKind(kind))

    def _count_sync(self, tenant: str, kind: IndexKind) -> int:
        return records.count(self._read_conn(), tenant, kind)

    async def knn(
        self,
        tenant: str,
        space: Space,
        vector: Vector,
        k: int,
        filters: Filters = NO_FILTERS,
        offset: int = 0,
    ) -> tuple[VectorHit, ...]:
        check_tenant(tenant)
        space = Space(space)
        query = frozen_vector(vector)
        check_vector(query, self.options.dims[space], "vector")
        check_query(k, offset, filters)
        return await self._call(
            self._readers, self._knn_sync, tenant, space, query, k, filters, offset
        )

    def _knn_sync(
        self, tenant: str, space: Space, query: Vector, k: int, filters: Filters, offset: int
    ) -> tuple[VectorHit, ...]:
        if not filters.allows(SPACE_KIND[space]):
            return ()
        conn = self._read_conn()
        need = k + offset
        conn.execute("BEGIN")
        try:
            candidates = self._candidates(conn, tenant, space, query, need, filters)
            ranked = rank(query, candidates, need)[offset:]
            boxes = (
                records.face_boxes(conn, (c.vector_id for c, _ in ranked))
                if space is Space.FACES
                else {}
            )
        finally:
            conn.execute("COMMIT")
        return tuple(
            VectorHit(
                image_id=c.image_id,
                score=score,
                space=space,
                face_index=c.sub if space is Space.FACES else None,
                box=boxes.get(c.vector_id),
            )
            for c, score in ranked
        )

    def _candidates(
        self,
        conn: sqlite3.Connection,
        tenant: str,
        space: Space,
        query: Vector,
        need: int,
        filters: Filters,
    ) -> records.Candidates:
        """Vectors to rank exactly: all matching ones when few can match, else HNSW's best.

        Few can match when the tenant has few vectors in the space (counted in memory) or one
        filter condition selects few images (counted in SQLite up to the threshold); the exact
        query then starts from those rows. Otherwise HNSW is over-fetched and re-checked.
        """
        threshold = max(self.options.exact_threshold, need)
        with self._counts_lock:
            tenant_vectors = self._counts.get((tenant, space), 0)
        if tenant_vectors <= threshold:
            return records.matching_vectors(conn, tenant, space, filters)
        for condition in records.conditions(filters):
            if records.condition_size(conn, condition, threshold + 1) <= threshold:
                return records.matching_vectors(conn, tenant, space, filters, drive=condition)
        cache = self.caches[space]
        size = cache.size
        # One candidate in size/tenant_vectors is the tenant's: ask for four times the share
        # that holds `need` of them. The filter conditions each select more than `threshold`
        # rows, but together may select few: widen until enough candidates match.
        fetch = max(64, math.ceil(4 * need * size / tenant_vectors))
        if fetch > self.options.max_fetch:
            return records.matching_vectors(conn, tenant, space, filters)
        fetch = min(size, fetch)
        while True:
            keys = cache.search(query, fetch)
            found = records.matching_vectors(conn, tenant, space, filters, keys.tolist())
            if len(found) >= need:
                return found
            if fetch >= size or fetch >= self.options.max_fetch:
                break
            shortfall = need / max(len(found), 1)
            fetch = min(size, self.options.max_fetch, int(fetch * max(4.0, 2 * shortfall)))
        _log.debug("hnsw %s over-fetch came up short; answering exactly", space)
        return records.matching_vectors(conn, tenant, space, filters)

    async def search_text(
        self,
        tenant: str,
        query: str,
        k: int,
        filters: Filters = NO_FILTERS,
        offset: int = 0,
    ) -> tuple[TextHit, ...]:
        check_tenant(tenant)
        check_query(k, offset, filters)
        query_terms = text.terms(query)[: text.MAX_QUERY_TERMS]
        return await self._call(
            self._readers, self._search_text_sync, tenant, query_terms, k, filters, offset
        )

    def _search_text_sync(
        self, tenant: str, query_terms: tuple[str, ...], k: int, filters: Filters, offset: int
    ) -> tuple[TextHit, ...]:
        kinds = [kind for kind in records.TEXT_COLUMNS if filters.allows(kind)]
        if not query_terms or not kinds:
            return ()
        conn = self._read_conn()
        columns = [records.TEXT_COLUMNS[kind] for kind in kinds]
        match_kinds = frozenset(_MATCH_KINDS[kind] for kind in kinds)
        conn.execute("BEGIN")
        try:
            rows = records.search_text(conn, tenant, query_terms, columns, filters, k, offset)
            return tuple(
                TextHit(
                    row.image_id,
                    row.score,
                    text.matches(records.get_by_rowid(conn, row.rowid), query_terms, match_kinds),
                )
                for row in rows
            )
        finally:
            conn.execute("COMMIT")

    # Lifecycle --------------------------------------------------------------------------------

    async def save_caches(self) -> None:
        """Write every HNSW cache that changed since its last save."""
        await self._call(self._writer, self._save_sync)

    def _save_sync(self) -> None:
        if self._write_conn is None:
            return
        for space, cache in self.caches.items():
            if cache.changes_since_save or not cache.path.exists():
                cache.save(records.space_version(self._write_conn, space))

    async def close(self) -> None:
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._writer, self._save_sync)
        finally:
            self._closed = True
            await loop.run_in_executor(self._writer, self._close_sync)
            self._writer.shutdown(wait=True)
            self._readers.shutdown(wait=True)

    def _close_sync(self) -> None:
        with self._connections_lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        if self._write_conn is not None:
            self._write_conn.close()
            self._write_conn = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def rank(
    query: Vector, candidates: records.Candidates, need: int
) -> list[tuple[records.Candidate, float]]:
    """The best `need` candidates by exact cosine similarity, best first; ties by image id,
    then sub-record.

    A float32 pass over every candidate keeps the best `need` plus a margin, and everything
    tied with the last of those (so ties still fall to the id); only those are scored in
    float64, rounded below float32 resolution so that equal vectors score exactly equal
    whatever the BLAS blocking, and sorted.
    """
    if not len(candidates):
        return []
    matrix = candidates.matrix
    keep = np.arange(len(candidates))
    shortlist = need + max(need, 32)
    if len(candidates) > shortlist:
        approx = (matrix @ query) / np.sqrt(np.einsum("ij,ij->i", matrix, matrix))
        floor = np.partition(approx, len(approx) - shortlist)[len(approx) - shortlist]
        keep = np.flatnonzero(approx >= floor - 1e-4 * float(np.linalg.norm(query)))
    kept = matrix[keep].astype(np.float64)
    q = query.astype(np.float64)
    cosine = (kept @ q) / (np.linalg.norm(kept, axis=1) * np.linalg.norm(q))
    scores: list[float] = np.round(np.clip(cosine, -1.0, 1.0), 6).tolist()
    picked = [candidates.rows[i] for i in keep.tolist()]
    order = sorted(
        range(len(picked)), key=lambda j: (-scores[j], picked[j].image_id, picked[j].sub)
    )
    return [(picked[j], scores[j]) for j in order[:need]]
