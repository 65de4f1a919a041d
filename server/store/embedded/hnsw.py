"""The embedded store's HNSW index for one embedding space: a derived cache, never the truth.

A usearch index (cosine, f16, vectors scaled to unit length so that f16 neither overflows nor
underflows) keyed by the `vectors.id` of the SQLite record of truth, with the per-tenant vector
counts of the space and the change marks (changes.ChangeMarks) of the snapshot it matches.
Any number of processes may hold one for the same directory: each follows the vectors table by
itself (`catch_up`: the vectors above its id mark, the tombstones above its tombstone mark),
and the one process holding the store's lock saves it to one file by write-then-rename, with a
header naming the (vector id mark, count) it covers. At open the file is loaded and compared id
by id with SQLite (stale keys removed, missing vectors added), or the index is rebuilt when the
file is missing, unreadable or of other parameters. Keys it returns are only candidates: the
caller re-checks them against SQLite.

Vectors are added on one thread: usearch's multi-threaded batch add leaves a few nodes that
searches cannot reach (measured: 25 of 30 000 self-queries missed vs 5 single-threaded), and a
single-threaded build does not depend on thread timing: the same rows give the same graph.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from usearch.index import Index
from usearch.index import search as exact_search

from server.store.base import Space, Vector
from server.store.embedded import candidates, changes

_log = logging.getLogger(__name__)

# 02: vectors are stored at unit length (01 files held them as given and are rebuilt).
_MAGIC = b"VGHNSW02"
_HEADER_LENGTH = struct.Struct("<I")
_CHUNK = 20_000
_LIVE_SLICE = 256

# Bounds on |cosine(cached vectors) - cosine(exact float32 vectors)|. Rounding a unit vector
# to f16 moves it by at most 2^-11 of its length (4.9e-4 rad), the query too, and the f32
# accumulation adds under 1e-4 at 1280-d: 1.1e-3, doubled for safety. Other dtypes (i8, b1)
# have no such bound and are never used for exact answers.
_COSINE_ERROR = {"f16": 2.5e-3, "f32": 1e-4, "f64": 1e-4}


@dataclass(frozen=True, slots=True)
class HnswParams:
    """Graph parameters. f16 halves the cache's memory; recall@10 stays at 0.998 or better
    (bench/report/store.md), and exact answers never depend on it (planner.py re-scores)."""

    connectivity: int = 16
    expansion_add: int = 128
    expansion_search: int = 96
    dtype: str = "f16"


def unit(matrix: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Rows (or one vector) scaled to length 1, the norm taken in float64 so that no finite
    float32 vector overflows or underflows on the way."""
    wide = matrix.astype(np.float64)
    norms = np.linalg.norm(wide, axis=-1, keepdims=True)
    scaled: npt.NDArray[np.float32] = (wide / norms).astype(np.float32)
    return scaled


class HnswCache:
    """One space's index, its per-tenant vector counts and the marks of the snapshot they match.

    `_lock` serialises index mutations against searches; `_follow_lock` lets one thread at a
    time move the cache to a newer snapshot, so that contents, counts and marks always describe
    the same snapshot (what `save` writes down).
    """

    def __init__(self, path: Path, space: Space, ndim: int, params: HnswParams) -> None:
        self.path = path
        self.space = space
        self.ndim = ndim
        self.params = params
        self.opened_as = "new"
        self.changes_since_save = 0
        self._file_current = False
        self._diverged = False
        self.marks = changes.ChangeMarks(0, 0)
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._follow_lock = threading.Lock()
        self._index = self._new_index()

    def _new_index(self) -> Index:
        return Index(
            ndim=self.ndim,
            metric="cos",
            dtype=self.params.dtype,
            connectivity=self.params.connectivity,
            expansion_add=self.params.expansion_add,
            expansion_search=self.params.expansion_search,
        )

    @property
    def size(self) -> int:
        return int(self._index.size)

    @property
    def needs_save(self) -> bool:
        """Whether the file on disk differs from the cache (or is missing or of another kind)."""
        return self.changes_since_save > 0 or not self._file_current

    @property
    def cosine_error(self) -> float | None:
        """How far `similarities` may be from the exact cosine, or None if unbounded."""
        return _COSINE_ERROR.get(self.params.dtype)

    def _header(self, version: tuple[int, int]) -> dict[str, object]:
        return {
            "space": self.space.value,
            "ndim": self.ndim,
            "dtype": self.params.dtype,
            "connectivity": self.params.connectivity,
            "seq": version[0],
            "count": version[1],
        }

    def open(self, conn: sqlite3.Connection) -> None:
        """Load the saved index and bring it up to the vectors table, or rebuild it. The caller
        holds a read transaction; the cache then matches its snapshot."""
        with self._follow_lock:
            version = changes.space_version(conn, self.space)
            saved = self._load()
            if saved is None:
                self._rebuild(conn)
                self.opened_as = "rebuilt"
            elif (saved["seq"], saved["count"]) == version:
                self.opened_as = "loaded"
                self._file_current = True
            else:
                self._compare(conn)
                self.opened_as = "caught_up"
                self._file_current = True
            self.marks = changes.change_marks(conn)
            self.counts = changes.tenant_counts(conn, self.space)

    def catch_up(self, conn: sqlite3.Connection) -> bool:
        """Apply what any process committed since the cache's snapshot: the caller holds a read
        transaction, whose snapshot the cache then matches (unless it already matches a newer
        one). Costs one lookup when nothing changed. Returns whether the cache moved."""
        marks = changes.change_marks(conn)
        if self.marks.covers(marks):
            return False
        with self._follow_lock:
            if self.marks.covers(marks):
                return False
            try:
                self._follow(conn)
            except sqlite3.Error:  # partly applied, maybe: compare whole id sets next time
                self._diverged = True
                raise
            except Exception:  # a cache that may have missed a change is rebuilt from SQLite
                _log.exception("following the vectors table failed; rebuilding hnsw %s", self.space)
                self._rebuild(conn)
                self.counts = changes.tenant_counts(conn, self.space)
            self.marks = marks
        return True

    def _follow(self, conn: sqlite3.Connection) -> None:
        old = self.marks
        tombstones = changes.tombstones_since(conn, self.space, old.tombstones)
        if tombstones is None or self._diverged:  # pruned past our mark, or half-applied
            self._compare(conn)
            self.counts = changes.tenant_counts(conn, self.space)
            self._diverged = False
            return
        # Only vectors the cache held: one added and deleted since its snapshot is in neither.
        gone = [(key, tenant) for key, tenant in tombstones if key <= old.vectors]
        if gone:
            with self._lock:
                self._index.remove(np.asarray([key for key, _ in gone], dtype=np.uint64))
            for _, tenant in gone:
                self._count(tenant, -1)
            self.changes_since_save += len(gone)
        after = old.vectors
        while True:
            keys, matrix, tenants = changes.vectors_since(conn, self.space, after, _CHUNK)
            if not keys.size:
                break
            self._add(self._index, keys, matrix)
            for tenant in tenants:
                self._count(tenant, 1)
            self.changes_since_save += int(keys.size)
            after = int(keys[-1])

    def _count(self, tenant: str, delta: int) -> None:
        left = self.counts.get(tenant, 0) + delta
        if left:
            self.counts[tenant] = left
        else:
            self.counts.pop(tenant, None)

    def _compare(self, conn: sqlite3.Connection) -> None:
        """Remove the keys SQLite no longer has and add the vectors the index lacks."""
        ids = changes.space_ids(conn, self.space)
        with self._lock:
            keys = np.asarray(self._index.keys, dtype=np.int64)
        stale = np.setdiff1d(keys, ids, assume_unique=True)
        missing = np.setdiff1d(ids, keys, assume_unique=True)
        if stale.size:
            with self._lock:
                self._index.remove(stale.astype(np.uint64))
        self._add_from(conn, self._index, missing)
        self.changes_since_save += int(stale.size + missing.size)
        _log.info("hnsw %s caught up: %d added, %d removed", self.space, missing.size, stale.size)

    def _load(self) -> dict[str, object] | None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            if not data.startswith(_MAGIC):
                raise ValueError("not an index file of this version")
            start = len(_MAGIC) + _HEADER_LENGTH.size
            (length,) = _HEADER_LENGTH.unpack_from(data, len(_MAGIC))
            header = json.loads(data[start : start + length])
            expected = self._header((header["seq"], header["count"]))
            if header != expected:
                raise ValueError(f"parameters differ: {header} != {expected}")
            index = self._new_index()
            index.load(memoryview(data)[start + length :])
            if index.size != header["count"]:
                raise ValueError(f"holds {index.size} vectors, header says {header['count']}")
        except Exception:  # any damage means "rebuild from SQLite", never a failed open
            _log.warning("hnsw cache %s unreadable; rebuilding", self.path, exc_info=True)
            return None
        # usearch declares the setter after another property, so its stub reads as read-only.
        index.expansion_search = self.params.expansion_search  # type: ignore[misc]
        with self._lock:
            self._index = index
        return dict(header)

    def _rebuild(self, conn: sqlite3.Connection) -> None:
        """A new index from every vector of the space, swapped in whole (searches meanwhile
        use the old one)."""
        index = self._new_index()
        ids = changes.space_ids(conn, self.space)
        self._add_from(conn, index, ids)
        with self._lock:
            self._index = index
        self.changes_since_save = int(ids.size)
        self._file_current = False
        _log.info("hnsw %s rebuilt from %d vectors", self.space, ids.size)

    def _add_from(self, conn: sqlite3.Connection, index: Index, ids: npt.NDArray[np.int64]) -> None:
        for start in range(0, ids.size, _CHUNK):
            keys, matrix = candidates.vectors_by_id(conn, ids[start : start + _CHUNK].tolist())
            if keys.size:
                self._add(index, keys, matrix)

    def _add(
        self, index: Index, keys: npt.NDArray[np.int64], matrix: npt.NDArray[np.float32]
    ) -> None:
        vectors = unit(matrix)
        if index is not self._index:  # a new index nobody searches yet
            index.add(keys.astype(np.uint64), vectors, threads=1)
            return
        # In slices, so that searches wait for one slice, not for thousands of vectors.
        for start in range(0, keys.size, _LIVE_SLICE):
            with self._lock:
                index.add(
                    keys[start : start + _LIVE_SLICE].astype(np.uint64),
                    vectors[start : start + _LIVE_SLICE],
                    threads=1,
                )

    def search(self, query: Vector, count: int) -> npt.NDArray[np.int64]:
        """Keys of up to `count` approximate nearest vectors, nearest first."""
        q = unit(query)
        with self._lock:
            if self._index.size == 0:
                return np.zeros(0, dtype=np.int64)
            # The candidate list must be at least as long as the answer asked for.
            self._index.expansion_search = max(self.params.expansion_search, count)  # type: ignore[misc]
            matches = self._index.search(q, count)
        return np.asarray(matches.keys, dtype=np.int64)

    def similarities(
        self, query: Vector, keys: list[int]
    ) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float64]]:
        """Cosine similarity of the query to each key's cached vector, within `cosine_error` of
        the exact one: (positions in `keys` the cache holds, their similarities). A key the
        cache lacks (written after its snapshot) is left for the caller to read from SQLite."""
        with self._lock:
            got = self._index.get(np.asarray(keys, dtype=np.uint64))
        assert isinstance(got, tuple)  # many keys give one entry each
        held = [(i, vector) for i, vector in enumerate(got) if vector is not None]
        present = np.asarray([i for i, _ in held], dtype=np.intp)
        if not held:
            return present, np.zeros(0, dtype=np.float64)
        matrix = np.concatenate([vector for _, vector in held]).reshape(len(held), self.ndim)
        q = unit(query).astype(matrix.dtype)
        matches = exact_search(matrix, q, len(held), "cos", exact=True, threads=1)
        similarity = np.empty(present.size, dtype=np.float64)
        order = np.asarray(matches.keys, dtype=np.intp)
        similarity[order] = 1.0 - np.asarray(matches.distances, dtype=np.float64)
        return present, similarity

    def save(self) -> None:
        """Write the index and the (id mark, count) it covers by write-then-rename; only the
        process holding the store's lock calls this."""
        with self._follow_lock:
            with self._lock:
                header = json.dumps(self._header((self.marks.vectors, self.size))).encode()
                payload = self._index.save()
            self.changes_since_save = 0
        assert payload is not None
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "wb") as out:
            out.write(_MAGIC)
            out.write(_HEADER_LENGTH.pack(len(header)))
            out.write(header)
            out.write(payload)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path)
        self._file_current = True
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
