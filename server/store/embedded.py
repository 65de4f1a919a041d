"""The embedded vector store: one directory, SQLite as the truth, one HNSW cache per space.

Writes run on one dedicated thread that owns the write connection (SQLite has one writer
anyway); reads run on a small pool of threads with a connection each (WAL lets them read while
the writer commits). The event loop only validates arguments and awaits.

Several processes may open one directory at once (N server processes on one port). SQLite
(WAL, a busy timeout) serialises their writes and stays the only truth: a write is acknowledged
once its commit is fsynced, whichever process made it, and get, text search and counts read
SQLite directly. The HNSW caches live in each process's memory, so each follows the vectors
table by itself: a k-NN first compares its cache's change marks with its snapshot's (one
lookup when nothing changed) and applies the vectors added and the tombstones written since
(records.py), and the writer thread does the same after each commit. Exactly one process, the
one holding the directory's lock file (taken without waiting, tried again when a save is due
and at close), writes the cache files; the others never do, so no two processes write one file.

A k-NN ranks exactly. When few rows can match (a selective filter, a small tenant) they are
all candidates: their ids come from covering indexes, their cosines are first judged on the
cache's in-memory f16 vectors (within a known bound of the exact ones), and only the rows that
this bound cannot rule out of the best k are checked against the tenant and filters, read from
SQLite as float32 and scored exactly. Otherwise HNSW is over-fetched and its candidates are
re-checked and scored the same way. Measured (bench/store.py, 1 000 matching rows of 100 000):
reading, checking and decoding every matching row was most of a selective query's time.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import math
import os
import sqlite3
import threading
import time
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
    close) by the process holding the lock; whatever a crash loses is caught up from SQLite at
    the next open. tombstones_kept: deleted-vector records kept for other processes' caches to
    follow; one that falls further behind compares its ids with SQLite instead.
    """

    dims: Mapping[Space, int] = field(default_factory=_default_dims)
    hnsw: HnswParams = HnswParams()
    exact_threshold: int = 2_000
    max_fetch: int = 8_192
    save_every: int = 50_000
    tombstones_kept: int = 100_000
    readers: int = 2


# A process that did not get the lock file tries again no sooner than this after a failure.
_LOCK_RETRY_S = 5.0
# Cosine scores are rounded to 6 decimals before ties fall to the id (see `rank`).
_ROUNDING = 1e-6
# The cache screens candidates only when there are this many times more than it keeps.
_SHORTLIST_FROM = 4


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
        self._holds_lock = False
        self._next_lock_try = 0.0
        self._save_queued = False
        self._closed = False
        self.caches: dict[Space, HnswCache] = {}

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
        self._lock_fd = os.open(self.path / "LOCK", os.O_RDWR | os.O_CREAT, 0o644)
        self._take_lock(retry_now=True)
        conn = records.connect(self.path / "store.sqlite3")
        self._write_conn = conn
        records.create_schema(conn)
        conn.execute("BEGIN")
        try:
            for space in Space:
                cache = HnswCache(
                    self.path / f"hnsw-{space.value}.usearch",
                    space,
                    self.options.dims[space],
                    self.options.hnsw,
                )
                cache.open(conn)
                self.caches[space] = cache
        finally:
            conn.execute("COMMIT")

    @property
    def holds_lock(self) -> bool:
        """Whether this instance holds the directory's lock file, and so saves the caches."""
        return self._holds_lock

    def _take_lock(self, retry_now: bool = False) -> bool:
        if self._holds_lock:
            return True
        now = time.monotonic()
        if self._lock_fd is None or (now < self._next_lock_try and not retry_now):
            return False
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._next_lock_try = now + _LOCK_RETRY_S
            return False
        self._holds_lock = True
        return True

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
        records.upsert(self._write_conn, batch)
        self._follow_commit()

    async def delete(self, tenant: str, image_id: str) -> bool:
        check_tenant(tenant)
        check_image_id(image_id)
        return await self._call(self._writer, self._delete_sync, tenant, image_id)

    def _delete_sync(self, tenant: str, image_id: str) -> bool:
        assert self._write_conn is not None
        existed = records.delete(self._write_conn, tenant, image_id)
        if existed:
            self._follow_commit()
        return existed

    def _follow_commit(self) -> None:
        """Bring the caches up to the commit just made (runs on the writer thread), so that
        this process's own writes reach its caches at write time, not at the next query."""
        assert self._write_conn is not None
        conn = self._write_conn
        try:
            conn.execute("BEGIN")
            try:
                for cache in self.caches.values():
                    cache.catch_up(conn)
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error:  # the write is committed; the next query catches up instead
            _log.exception("following a commit into the hnsw caches failed")
        self._save_due()

    def _save_due(self) -> None:
        """Save the caches that changed enough, if this process holds the lock (writer thread)."""
        self._save_queued = False
        due = [c for c in self.caches.values() if c.changes_since_save >= self.options.save_every]
        if due and self._take_lock():
            self._save(due)

    def _save(self, caches: Sequence[HnswCache]) -> None:
        assert self._write_conn is not None
        for cache in caches:
            try:
                cache.save()
            except OSError:  # every write is durable in SQLite; the next open catches up
                _log.exception("saving the hnsw %s cache failed", cache.space)
        try:
            records.prune_tombstones(self._write_conn, self.options.tombstones_kept)
        except sqlite3.Error:
            _log.exception("pruning vector tombstones failed")

    def _queue_save(self, cache: HnswCache) -> None:
        """From a reader thread: a cache that followed other processes' writes far enough is
        saved on the writer thread (by the lock holder), never during the query."""
        if self._save_queued or cache.changes_since_save < self.options.save_every:
            return
        if not self._holds_lock and time.monotonic() < self._next_lock_try:
            return
        self._save_queued = True
        try:
            self._writer.submit(self._save_due)
        except RuntimeError:  # shutting down: close() saves
            self._save_queued = False

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
        cache = self.caches[space]
        need = k + offset
        conn.execute("BEGIN")
        try:
            cache.catch_up(conn)
            candidates = self._candidates(conn, cache, tenant, query, need, filters)
            ranked = rank(query, candidates, need)[offset:]
            boxes = (
                records.face_boxes(conn, (c.vector_id for c, _ in ranked))
                if space is Space.FACES
                else {}
            )
        finally:
            conn.execute("COMMIT")
        self._queue_save(cache)
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
        cache: HnswCache,
        tenant: str,
        query: Vector,
        need: int,
        filters: Filters,
    ) -> records.Candidates:
        """Vectors to rank exactly: the matching ones that can be among the best `need` when
        few can match, else HNSW's best re-checked.

        Few can match when the tenant has few vectors in the space (counted in memory) or one
        filter condition selects few images (counted in SQLite up to the threshold); the exact
        path then starts from those rows. Otherwise HNSW is over-fetched and re-checked.
        """
        space = cache.space
        threshold = max(self.options.exact_threshold, need)
        tenant_vectors = cache.counts.get(tenant, 0)
        if tenant_vectors <= threshold:
            return self._exact(conn, cache, tenant, query, need, filters, tenant_vectors)
        for condition in records.conditions(filters):
            selected = records.condition_size(conn, condition, threshold + 1)
            if selected <= threshold:
                return self._exact(conn, cache, tenant, query, need, filters, selected, condition)
        size = cache.size
        # One candidate in size/tenant_vectors is the tenant's: ask for four times the share
        # that holds `need` of them. The filter conditions each select more than `threshold`
        # rows, but together may select few: widen until enough candidates match.
        fetch = max(64, math.ceil(4 * need * size / tenant_vectors))
        if fetch > self.options.max_fetch:
            return self._exact(conn, cache, tenant, query, need, filters, tenant_vectors)
        fetch = min(size, fetch)
        while True:
            keys = cache.search(query, fetch).tolist()
            if len(keys) <= _SHORTLIST_FROM * (need + max(need, 32)):
                # A few dozen: checked and read in one pass (the cache would save little).
                found = records.matching_vectors(conn, tenant, space, filters, keys)
            else:
                rows = records.matching_rows(conn, tenant, space, filters, keys)
                found = records.with_vectors(conn, shortlist(cache, query, rows, need))
            if len(found) >= need:
                return found
            if fetch >= size or fetch >= self.options.max_fetch:
                break
            shortfall = need / max(len(found), 1)
            fetch = min(size, self.options.max_fetch, int(fetch * max(4.0, 2 * shortfall)))
        _log.debug("hnsw %s over-fetch came up short; answering exactly", space)
        return self._exact(conn, cache, tenant, query, need, filters, tenant_vectors)

    def _exact(
        self,
        conn: sqlite3.Connection,
        cache: HnswCache,
        tenant: str,
        query: Vector,
        need: int,
        filters: Filters,
        reachable: int,
        drive: records.Condition | None = None,
    ) -> records.Candidates:
        """Every matching vector that can be among the best `need`, reached from the images
        `drive` selects (else from the tenant's), read from SQLite; `reachable` says about how
        many rows that start reaches (images the condition selects, or the tenant's vectors).

        Checking a row against the tenant and filters costs SQLite a lookup per row, so rows
        are checked in the order of the cache's similarities and only as far as the bound of
        `shortlist` needs: until `keep` rows passed, then on to the floor they set, less twice
        the cache's error. Rows the cache lacks are checked first and always kept.
        """
        space = cache.space
        keep = need + max(need, 32)
        error = cache.cosine_error
        if reachable <= _SHORTLIST_FROM * keep or error is None:
            return records.matching_vectors(conn, tenant, space, filters, drive=drive)
        ids = records.vector_ids(conn, tenant, space, drive)
        if len(ids) <= _SHORTLIST_FROM * keep:
            return records.matching_vectors(conn, tenant, space, filters, ids, drive)
        present, similarity = cache.similarities(query, ids)
        held = np.zeros(len(ids), dtype=bool)
        held[present] = True
        order = [*np.flatnonzero(~held).tolist(), *present[np.argsort(-similarity)].tolist()]
        of_id = dict(zip((ids[i] for i in present.tolist()), similarity.tolist(), strict=True))
        passed: list[records.Candidate] = []
        passed_scores: list[float] = []  # of the passed rows the cache holds, best first
        floor: float | None = None
        done = 0
        step = 2 * keep
        while done < len(order):
            batch = [ids[i] for i in order[done : done + step]]
            done += len(batch)
            for row in records.matching_rows(conn, tenant, space, filters, batch, drive):
                passed.append(row)
                if row.vector_id in of_id:
                    passed_scores.append(of_id[row.vector_id])
            if floor is None and len(passed_scores) >= keep:
                floor = sorted(passed_scores, reverse=True)[keep - 1]
            last = of_id.get(batch[-1])
            if floor is not None and last is not None and last < floor - 2 * error - _ROUNDING:
                break  # every row after this one scores lower still on the cache
            step *= 2
        if floor is not None:
            cut = floor - 2 * error - _ROUNDING
            passed = [row for row in passed if of_id.get(row.vector_id, math.inf) >= cut]
        return records.with_vectors(conn, passed)

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
        """Write every HNSW cache that changed since its last save, if this process holds the
        directory's lock (or can take it now)."""
        await self._call(self._writer, self._save_sync)

    def _save_sync(self) -> None:
        if self._write_conn is None or not self._take_lock(retry_now=True):
            return
        self._save([cache for cache in self.caches.values() if cache.needs_save])

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
            os.close(self._lock_fd)  # releases the lock for another process to take
            self._lock_fd = None
            self._holds_lock = False


def shortlist(
    cache: HnswCache, query: Vector, rows: list[records.Candidate], need: int
) -> list[records.Candidate]:
    """The rows that can be among the best `need`, judged on the cache's in-memory vectors so
    that only those are read from SQLite and scored exactly.

    A cached similarity is within e = `cache.cosine_error` of the exact one. If `need` rows
    score at least f on the cache, each scores at least f - e exactly, so a row of the exact
    answer scores at least f - e (less the rounding of scores) and at least f - 2e on the cache:
    every row below that is dropped, with f the cache's shortlist-th best (no higher than its
    need-th). Rows the cache does not hold are kept. Only worth it when it saves most of the
    reads: HNSW's few dozen over-fetched candidates are read whole (measured 13 % slower
    through the cache at 64 candidates, 1280-d).
    """
    keep_at_least = need + max(need, 32)
    error = cache.cosine_error
    if len(rows) <= _SHORTLIST_FROM * keep_at_least or error is None:
        return rows
    present, similarity = cache.similarities(query, [row.vector_id for row in rows])
    if present.size <= keep_at_least:
        return rows
    cut = present.size - keep_at_least
    floor = float(np.partition(similarity, cut)[cut])
    keep = np.ones(len(rows), dtype=bool)
    keep[present] = similarity >= floor - 2 * error - _ROUNDING
    return [rows[i] for i in np.flatnonzero(keep).tolist()]


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
        # Each row divided by its largest component first, so that no finite vector
        # overflows or underflows in float32 (a store takes any magnitude).
        scaled = matrix / np.abs(matrix).max(axis=1, keepdims=True)
        q32 = query / np.abs(query).max()
        approx = (scaled @ q32) / np.sqrt(np.einsum("ij,ij->i", scaled, scaled))
        floor = np.partition(approx, len(approx) - shortlist)[len(approx) - shortlist]
        keep = np.flatnonzero(approx >= floor - 1e-4 * float(np.linalg.norm(q32)))
    kept = matrix[keep].astype(np.float64)
    q = query.astype(np.float64)
    cosine = (kept @ q) / (np.linalg.norm(kept, axis=1) * np.linalg.norm(q))
    scores: list[float] = np.round(np.clip(cosine, -1.0, 1.0), 6).tolist()
    picked = [candidates.rows[i] for i in keep.tolist()]
    order = sorted(
        range(len(picked)), key=lambda j: (-scores[j], picked[j].image_id, picked[j].sub)
    )
    return [(picked[j], scores[j]) for j in order[:need]]
