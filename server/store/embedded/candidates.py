"""The k-NN candidate queries: which vectors of a space match a tenant and filters, with or
without their values, and the exact float32 vectors of given ids.

Blocking functions over one `sqlite3.Connection`, run inside the caller's read transaction so
that every statement of one query sees one snapshot.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from server.domain import Box
from server.store.base import Filters, Space
from server.store.embedded.filters import Condition, Where, face_where, where


class Candidate(NamedTuple):
    """A vector that matched a query's tenant and filters: what a hit needs (a tuple, built
    straight from each result row: a query may return thousands)."""

    vector_id: int
    image_id: str
    sub: int


@dataclass(frozen=True, slots=True)
class Candidates:
    """Matching vectors, row i of `matrix` belonging to `rows[i]` (one copy, no per-row arrays)."""

    rows: list[Candidate]
    matrix: npt.NDArray[np.float32]

    def __len__(self) -> int:
        return len(self.rows)


def _matching_sql(
    columns: str,
    tenant: str,
    space: Space,
    filters: Filters,
    among: Sequence[int] | None,
    drive: Condition | None,
) -> tuple[str, list[object]]:
    """The query behind `matching_rows` and `matching_vectors`: see there."""
    image = where(tenant, filters, skip=drive)
    face = face_where(filters) if space is Space.FACES else Where((), ())
    cond = Where(image.clauses + face.clauses, image.params + face.params)
    if among is not None:
        sql = (
            f"SELECT {columns} FROM vectors v CROSS JOIN images i ON i.id = v.image"
            f" WHERE v.id IN ({', '.join('?' * len(among))}) AND v.space = ? AND {cond.sql}"
        )
        return sql, [*among, space.value, *cond.params]
    if drive is not None:
        sql = (
            f"SELECT {columns} FROM (SELECT DISTINCT image FROM ({drive.images_sql})) d"
            " CROSS JOIN images i ON i.id = d.image"
            " CROSS JOIN vectors v ON v.image = i.id AND v.space = ?"
            f" WHERE {cond.sql}"
        )
        return sql, [*drive.params, space.value, *cond.params]
    sql = (
        f"SELECT {columns} FROM images i CROSS JOIN vectors v ON v.image = i.id AND v.space = ?"
        f" WHERE {cond.sql}"
    )
    return sql, [space.value, *cond.params]


def matching_rows(
    conn: sqlite3.Connection,
    tenant: str,
    space: Space,
    filters: Filters,
    among: Sequence[int] | None = None,
    drive: Condition | None = None,
) -> list[Candidate]:
    """The vectors of the space that match, without their values: among the ids `among` when
    given (known to meet `drive` if that is given too), else reached from the images `drive`
    selects when given (a selective condition), else from the tenant's images. CROSS JOIN fixes
    that order: SQLite keeps the tables in the order written. Without `among` the vectors table
    is read through its covering index only."""
    if among is not None and not among:
        return []
    sql, args = _matching_sql("v.id, i.image_id, v.sub", tenant, space, filters, among, drive)
    return list(map(Candidate._make, conn.execute(sql, args)))


def matching_vectors(
    conn: sqlite3.Connection,
    tenant: str,
    space: Space,
    filters: Filters,
    among: Sequence[int] | None = None,
    drive: Condition | None = None,
) -> Candidates:
    """`matching_rows` with the vectors' values, in the same pass: for a few dozen or hundred
    rows, cheaper than reading ids first and values after."""
    if among is not None and not among:
        return Candidates([], np.zeros((0, 0), dtype=np.float32))
    sql, args = _matching_sql(
        "v.id, i.image_id, v.sub, v.vec", tenant, space, filters, among, drive
    )
    rows: list[Candidate] = []
    blobs: list[bytes] = []
    for vector_id, image_id, sub, blob in conn.execute(sql, args):
        rows.append(Candidate(vector_id, image_id, sub))
        blobs.append(blob)
    if not rows:
        return Candidates([], np.zeros((0, 0), dtype=np.float32))
    matrix = np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(rows), -1)
    return Candidates(rows, matrix.astype(np.float32, copy=False))


def vector_ids(
    conn: sqlite3.Connection, tenant: str, space: Space, drive: Condition | None = None
) -> list[int]:
    """The space's vector ids of the images `drive` selects (any tenant: the caller checks),
    or else of the tenant's images; read from covering indexes only."""
    if drive is not None:
        sql = (
            f"SELECT v.id FROM (SELECT DISTINCT image FROM ({drive.images_sql})) d"
            " CROSS JOIN vectors v ON v.image = d.image AND v.space = ?"
        )
        args: list[object] = [*drive.params, space.value]
    else:
        sql = (
            "SELECT v.id FROM images i CROSS JOIN vectors v ON v.image = i.id AND v.space = ?"
            " WHERE i.tenant = ?"
        )
        args = [space.value, tenant]
    return [row[0] for row in conn.execute(sql, args)]


def with_vectors(conn: sqlite3.Connection, rows: Sequence[Candidate]) -> Candidates:
    """The rows with their exact float32 vectors read from SQLite."""
    if not rows:
        return Candidates([], np.zeros((0, 0), dtype=np.float32))
    keys, matrix = vectors_by_id(conn, [row.vector_id for row in rows])
    position = {key: i for i, key in enumerate(keys.tolist())}
    # A row's vector is gone only if it was deleted after the rows were read: in another
    # transaction, which the caller's open read transaction rules out.
    order = [position[row.vector_id] for row in rows]
    return Candidates(list(rows), matrix[order])


def face_details(conn: sqlite3.Connection, vector_ids: Iterable[int]) -> dict[int, tuple[Box, str]]:
    """The box and person id of each face vector."""
    ids = list(vector_ids)
    if not ids:
        return {}
    rows = conn.execute(
        "SELECT v.id, f.x_min, f.y_min, f.x_max, f.y_max, f.person_id FROM vectors v"
        " JOIN faces f ON f.image = v.image AND f.idx = v.sub"
        f" WHERE v.id IN ({', '.join('?' * len(ids))})",
        ids,
    )
    return {row[0]: (Box(*row[1:5]), str(row[5])) for row in rows}


def vectors_by_id(
    conn: sqlite3.Connection, ids: Sequence[int]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """Keys and a stacked matrix of the given vector ids (for filling an HNSW cache)."""
    keys: list[int] = []
    blobs: list[bytes] = []
    for start in range(0, len(ids), 10_000):
        chunk = [int(i) for i in ids[start : start + 10_000]]
        for vector_id, blob in conn.execute(
            f"SELECT id, vec FROM vectors WHERE id IN ({', '.join('?' * len(chunk))})", chunk
        ):
            keys.append(vector_id)
            blobs.append(blob)
    if not keys:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32)
    matrix = np.frombuffer(b"".join(blobs), dtype="<f4").reshape(len(keys), -1)
    return np.asarray(keys, dtype=np.int64), matrix.astype(np.float32, copy=False)
