"""Change tracking across processes: how far the vectors table has come, and what changed since.

Every process keeps its own HNSW caches, so each follows the vectors table by itself: what
changed since a cache last looked is the vectors above the id it last saw plus the tombstones
(deleted vectors) above the sequence number it last saw. Tombstones are pruned to a bound; a
cache further behind compares whole id sets instead (`space_ids`, `space_version`).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from server.store.base import Space
from server.store.embedded.schema import transaction


@dataclass(frozen=True, slots=True)
class ChangeMarks:
    """How far the vectors table has come: the highest vector id and tombstone number ever
    issued. Both only grow, and a snapshot with equal marks holds the same vectors."""

    vectors: int
    tombstones: int

    def covers(self, other: ChangeMarks) -> bool:
        return self.vectors >= other.vectors and self.tombstones >= other.tombstones


def change_marks(conn: sqlite3.Connection) -> ChangeMarks:
    """The marks of the caller's snapshot (one lookup in a three-row table)."""
    seqs = dict(
        conn.execute(
            "SELECT name, seq FROM sqlite_sequence WHERE name IN ('vectors', 'vector_tombstones')"
        ).fetchall()
    )
    return ChangeMarks(int(seqs.get("vectors", 0)), int(seqs.get("vector_tombstones", 0)))


def vectors_since(
    conn: sqlite3.Connection, space: Space, after: int, limit: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32], list[str]]:
    """Up to `limit` vectors of the space with ids above `after`, in id order: their ids,
    values and tenants."""
    keys: list[int] = []
    tenants: list[str] = []
    blobs: list[bytes] = []
    for vector_id, tenant, blob in conn.execute(
        "SELECT v.id, i.tenant, v.vec FROM vectors v CROSS JOIN images i ON i.id = v.image"
        " WHERE v.id > ? AND v.space = ? ORDER BY v.id LIMIT ?",
        (after, space.value, limit),
    ):
        keys.append(vector_id)
        tenants.append(tenant)
        blobs.append(blob)
    if not keys:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32), []
    matrix = np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(keys), -1)
    return np.asarray(keys, dtype=np.int64), matrix.astype(np.float32, copy=False), tenants


def tombstones_since(
    conn: sqlite3.Connection, space: Space, after: int
) -> list[tuple[int, str]] | None:
    """(vector id, tenant) of the space's vectors deleted after tombstone number `after`, or
    None when some of those tombstones were already pruned (the caller must then compare
    whole id sets)."""
    oldest = conn.execute("SELECT MIN(seq) FROM vector_tombstones").fetchone()[0]
    newest = change_marks(conn).tombstones
    if newest > after and (oldest is None or oldest > after + 1):
        return None
    rows = conn.execute(
        "SELECT vector, tenant FROM vector_tombstones WHERE seq > ? AND space = ?",
        (after, space.value),
    )
    return [(int(vector_id), str(tenant)) for vector_id, tenant in rows]


def prune_tombstones(conn: sqlite3.Connection, keep: int) -> int:
    """Delete all but the newest `keep` tombstones; a cache further behind than that is
    compared id by id with the vectors table instead. Returns how many were deleted."""
    with transaction(conn, write=True):
        newest = change_marks(conn).tombstones
        cursor = conn.execute("DELETE FROM vector_tombstones WHERE seq <= ?", (newest - keep,))
    return int(cursor.rowcount)


def tenant_counts(conn: sqlite3.Connection, space: Space) -> dict[str, int]:
    """Vectors per tenant in the space; a cache keeps them current as it follows the table."""
    rows = conn.execute(
        "SELECT i.tenant, COUNT(*) FROM vectors v CROSS JOIN images i ON i.id = v.image"
        " WHERE v.space = ? GROUP BY i.tenant",
        (space.value,),
    )
    return {tenant: int(n) for tenant, n in rows}


def space_ids(conn: sqlite3.Connection, space: Space) -> npt.NDArray[np.int64]:
    rows = conn.execute("SELECT id FROM vectors WHERE space = ? ORDER BY id", (space.value,))
    return np.fromiter((row[0] for row in rows), dtype=np.int64)


def space_version(conn: sqlite3.Connection, space: Space) -> tuple[int, int]:
    """(highest vector id ever issued, vectors in the space): equal pairs mean equal id sets,
    because ids only grow and any delete lowers the count."""
    seq = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'vectors'").fetchone()
    count = conn.execute("SELECT COUNT(*) FROM vectors WHERE space = ?", (space.value,)).fetchone()
    return (0 if seq is None else int(seq[0])), int(count[0])
