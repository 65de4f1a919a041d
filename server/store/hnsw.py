"""The embedded store's HNSW index for one embedding space: a derived cache, never the truth.

A usearch index (cosine, f16) keyed by the `vectors.id` of the SQLite record of truth. It is
saved to one file by write-then-rename, with a header naming the (id sequence, count) of the
vectors table it covers; at open it is loaded and caught up from SQLite (stale keys removed,
missing vectors added), or rebuilt when the file is missing, unreadable or of other parameters.
Keys it returns are only candidates: the caller re-checks them against SQLite.

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

from server.store import records
from server.store.base import Space, Vector

_log = logging.getLogger(__name__)

_MAGIC = b"VGHNSW01"
_HEADER_LENGTH = struct.Struct("<I")


@dataclass(frozen=True, slots=True)
class HnswParams:
    """Graph parameters. f16 halves memory at no measurable recall cost (DESIGN.md §4)."""

    connectivity: int = 16
    expansion_add: int = 128
    expansion_search: int = 96
    dtype: str = "f16"


class HnswCache:
    """One space's index plus the lock that serialises its mutations against searches."""

    def __init__(self, path: Path, space: Space, ndim: int, params: HnswParams) -> None:
        self.path = path
        self.space = space
        self.ndim = ndim
        self.params = params
        self.opened_as = "new"
        self.changes_since_save = 0
        self._lock = threading.Lock()
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
        """Load the saved index and bring it up to the vectors table, or rebuild it."""
        version = records.space_version(conn, self.space)
        saved = self._load()
        if saved is None:
            self._rebuild(conn)
            self.opened_as = "rebuilt"
            return
        if (saved["seq"], saved["count"]) == version:
            self.opened_as = "loaded"
            return
        ids = records.space_ids(conn, self.space)
        keys = np.asarray(self._index.keys, dtype=np.int64)
        stale = np.setdiff1d(keys, ids, assume_unique=True)
        missing = np.setdiff1d(ids, keys, assume_unique=True)
        if stale.size:
            self._index.remove(stale.astype(np.uint64))
        self._add_from(conn, missing)
        self.changes_since_save = int(stale.size + missing.size)
        self.opened_as = "caught_up"
        _log.info("hnsw %s caught up: %d added, %d removed", self.space, missing.size, stale.size)

    def _load(self) -> dict[str, object] | None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            if not data.startswith(_MAGIC):
                raise ValueError("not an index file")
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
        self._index = index
        return dict(header)

    def _rebuild(self, conn: sqlite3.Connection) -> None:
        self._index = self._new_index()
        ids = records.space_ids(conn, self.space)
        self._add_from(conn, ids)
        self.changes_since_save = int(ids.size)
        _log.info("hnsw %s rebuilt from %d vectors", self.space, ids.size)

    def _add_from(self, conn: sqlite3.Connection, ids: npt.NDArray[np.int64]) -> None:
        for start in range(0, ids.size, 20_000):
            keys, matrix = records.vectors_by_id(conn, ids[start : start + 20_000].tolist())
            if keys.size:
                self._index.add(keys.astype(np.uint64), matrix, threads=1)

    def apply(self, removed: list[int], added: list[tuple[int, Vector]]) -> None:
        with self._lock:
            if removed:
                self._index.remove(np.asarray(removed, dtype=np.uint64))
            if added:
                keys = np.asarray([key for key, _ in added], dtype=np.uint64)
                self._index.add(keys, np.stack([vector for _, vector in added]), threads=1)
            self.changes_since_save += len(removed) + len(added)

    def search(self, query: Vector, count: int) -> npt.NDArray[np.int64]:
        """Keys of up to `count` approximate nearest vectors, nearest first."""
        with self._lock:
            if self._index.size == 0:
                return np.zeros(0, dtype=np.int64)
            # The candidate list must be at least as long as the answer asked for.
            self._index.expansion_search = max(self.params.expansion_search, count)  # type: ignore[misc]
            matches = self._index.search(query, count)
        return np.asarray(matches.keys, dtype=np.int64)

    def save(self, version: tuple[int, int]) -> None:
        """Write the index and the table version it covers; the caller holds the write side."""
        with self._lock:
            header = json.dumps(self._header(version)).encode()
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
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
