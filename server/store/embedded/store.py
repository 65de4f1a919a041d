"""The embedded vector store: one directory, SQLite as the truth, one HNSW cache per space.

Writes run on one dedicated thread that owns the write connection (SQLite has one writer
anyway); reads run on a small pool of threads with a connection each (WAL lets them read while
the writer commits). The event loop only awaits; arguments arrive checked (checked.py).

Several processes may open one directory at once (N server processes on one port). SQLite
(WAL, a busy timeout) serialises their writes and stays the only truth: a write is acknowledged
once its commit is fsynced, whichever process made it, and get, text search and counts read
SQLite directly. The HNSW caches live in each process's memory, so each follows the vectors
table by itself: a k-NN first compares its cache's change marks with its snapshot's (one
lookup when nothing changed) and applies the vectors added and the tombstones written since
(changes.py), and the writer thread does the same after each commit. Exactly one process, the
one holding the directory's lock file (taken without waiting, tried again when a save is due
and at close), writes the cache files; the others never do, so no two processes write one file.

How a k-NN chooses what to score is planner.py.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from server.domain import StoreError, StoreUnavailableError
from server.store import text
from server.store.base import (
    DEFAULT_FACE_DIM,
    DEFAULT_IMAGE_DIM,
    NO_FILTERS,
    SPACE_KIND,
    BrowseHit,
    Filters,
    ImageRecord,
    IndexKind,
    MatchKind,
    Person,
    Space,
    TextHit,
    Vector,
    VectorHit,
)
from server.store.embedded import changes, fulltext, people, planner, records, schema
from server.store.embedded.candidates import face_details
from server.store.embedded.hnsw import HnswCache, HnswParams
from server.store.embedded.schema import transaction

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


class EmbeddedStore:
    """`VectorStore` over a directory; create it with `await EmbeddedStore.open(path)`."""

    def __init__(self, path: Path, options: EmbeddedOptions) -> None:
        self.path = path
        self.options = options
        self._limits = planner.PlanLimits(options.exact_threshold, options.max_fetch)
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
        conn = schema.connect(self.path / "store.sqlite3")
        self._write_conn = conn
        schema.create_schema(conn, text.fold)
        with transaction(conn):
            for space in Space:
                cache = HnswCache(
                    self.path / f"hnsw-{space.value}.usearch",
                    space,
                    self.options.dims[space],
                    self.options.hnsw,
                )
                cache.open(conn)
                self.caches[space] = cache

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
            conn = schema.connect(self.path / "store.sqlite3")
            self._local.conn = conn
            with self._connections_lock:
                self._connections.append(conn)
        return conn

    # Writes -----------------------------------------------------------------------------------

    async def upsert(self, record: ImageRecord) -> None:
        await self._call(self._writer, self._upsert_sync, (record,))

    async def upsert_many(self, batch: Sequence[ImageRecord]) -> None:
        await self._call(self._writer, self._upsert_sync, batch)

    def _upsert_sync(self, batch: Sequence[ImageRecord]) -> None:
        assert self._write_conn is not None
        records.upsert(self._write_conn, batch)
        self._follow_commit()

    async def delete(self, tenant: str, image_id: str) -> bool:
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
            with transaction(conn):
                for cache in self.caches.values():
                    cache.catch_up(conn)
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
            changes.prune_tombstones(self._write_conn, self.options.tombstones_kept)
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
        found: ImageRecord | None = await self._call(
            self._readers, self._on_reader, records.get, tenant, image_id)
        return found

    async def count(self, tenant: str, kind: IndexKind) -> int:
        counted: int = await self._call(self._readers, self._on_reader, records.count, tenant,
                                        kind)  # fmt: skip
        return counted

    async def knn(
        self,
        tenant: str,
        space: Space,
        vector: Vector,
        k: int,
        filters: Filters = NO_FILTERS,
        offset: int = 0,
        min_score: float | None = None,
    ) -> tuple[VectorHit, ...]:
        return await self._call(
            self._readers, self._knn_sync, tenant, space, vector, k, filters, offset, min_score
        )

    def _knn_sync(
        self,
        tenant: str,
        space: Space,
        query: Vector,
        k: int,
        filters: Filters,
        offset: int,
        min_score: float | None,
    ) -> tuple[VectorHit, ...]:
        if not filters.allows(SPACE_KIND[space]):
            return ()
        conn = self._read_conn()
        cache = self.caches[space]
        need = k + offset
        with transaction(conn):
            cache.catch_up(conn)
            found = planner.find_candidates(conn, cache, tenant, query, need, filters, self._limits)
            ranked = planner.rank(query, found, need)[offset:]
            if min_score is not None:  # scores fall along the ranking: the floor cuts its tail
                ranked = [(c, score) for c, score in ranked if score >= min_score]
            faces = (
                face_details(conn, (c.vector_id for c, _ in ranked))
                if space is Space.FACES
                else {}
            )
        self._queue_save(cache)
        return tuple(
            VectorHit(
                image_id=c.image_id,
                score=score,
                space=space,
                face_index=c.sub if space is Space.FACES else None,
                box=faces[c.vector_id][0] if c.vector_id in faces else None,
                person_id=faces[c.vector_id][1] if c.vector_id in faces else "",
            )
            for c, score in ranked
        )

    async def search_text(
        self,
        tenant: str,
        query: str,
        k: int,
        filters: Filters = NO_FILTERS,
        offset: int = 0,
    ) -> tuple[TextHit, ...]:
        query_terms = text.terms(query)[: text.MAX_QUERY_TERMS]
        return await self._call(
            self._readers, self._search_text_sync, tenant, query_terms, k, filters, offset
        )

    def _search_text_sync(
        self, tenant: str, query_terms: tuple[str, ...], k: int, filters: Filters, offset: int
    ) -> tuple[TextHit, ...]:
        kinds = [kind for kind in fulltext.TEXT_COLUMNS if filters.allows(kind)]
        if not query_terms or not kinds:
            return ()
        conn = self._read_conn()
        columns = [fulltext.TEXT_COLUMNS[kind] for kind in kinds]
        match_kinds = frozenset(_MATCH_KINDS[kind] for kind in kinds)
        with transaction(conn):
            rows = fulltext.search_text(conn, tenant, query_terms, columns, filters, k, offset)
            return tuple(
                TextHit(
                    row.image_id,
                    row.score,
                    text.matches(records.get_by_rowid(conn, row.rowid), query_terms, match_kinds),
                )
                for row in rows
            )

    async def browse(
        self, tenant: str, filters: Filters, k: int, offset: int = 0
    ) -> tuple[BrowseHit, ...]:
        rows: list[tuple[str, datetime]] = await self._call(
            self._readers, self._on_reader, records.browse, tenant, filters, k, offset)
        return tuple(BrowseHit(image_id, created_at) for image_id, created_at in rows)

    async def find_duplicate(
        self,
        tenant: str,
        content_sha256: str,
        embedding: Vector | None,
        min_cosine: float,
        exclude_id: str,
    ) -> str | None:
        if content_sha256:
            same: str | None = await self._call(
                self._readers, self._on_reader, records.same_bytes, tenant, content_sha256,
                exclude_id)  # fmt: skip
            if same is not None:
                return same
        if embedding is None:
            return None
        others = Filters(exclude_ids=frozenset({exclude_id}))
        nearest = await self.knn(tenant, Space.IMAGES, embedding, 1, others, 0, min_cosine)
        return nearest[0].image_id if nearest else None

    # People -----------------------------------------------------------------------------------

    async def list_people(self, tenant: str, k: int, offset: int = 0) -> tuple[Person, ...]:
        found: list[Person] = await self._call(
            self._readers, self._on_reader, people.list_people, tenant, k, offset)
        return tuple(found)

    async def get_person(self, tenant: str, person_id: str) -> Person | None:
        return await self._call(self._readers, self._on_reader, people.get_person, tenant,
                                person_id)  # fmt: skip

    async def rename_person(self, tenant: str, person_id: str, name: str) -> Person | None:
        return await self._call(self._writer, self._on_writer, people.rename_person, tenant,
                                person_id, name)  # fmt: skip

    async def merge_people(
        self, tenant: str, person_ids: frozenset[str], target_id: str
    ) -> Person | None:
        return await self._call(self._writer, self._on_writer, people.merge_people, tenant,
                                sorted(person_ids), target_id)  # fmt: skip

    def _on_reader(self, fn: Callable[..., _T], *args: object) -> _T:
        return fn(self._read_conn(), *args)

    def _on_writer(self, fn: Callable[..., _T], *args: object) -> _T:
        assert self._write_conn is not None
        return fn(self._write_conn, *args)

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
