"""The embedded store's record of truth: the SQLite schema and every statement run against it.

Blocking functions over one `sqlite3.Connection` each; the async store decides which thread runs
them. One image is one row in `images`; its labels, objects, faces, OCR lines and metadata are
child rows deleted with it (ON DELETE CASCADE); its vectors are rows of `vectors` whose ids,
never reused (AUTOINCREMENT), are the keys of the HNSW caches; its OCR text and label names are
one row of the FTS5 table `text_index` with the image's row id. Deleting a vector leaves a row
in `vector_tombstones`, so that every process's HNSW caches can follow the vectors table: what
changed since they last looked is the vectors above the id they last saw plus the tombstones
above the sequence number they last saw.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from server.domain import Box
from server.store.base import (
    SPACE_KIND,
    FaceRecord,
    Filters,
    ImageRecord,
    IndexKind,
    Label,
    ObjectRecord,
    OcrLine,
    Space,
    Vector,
    metadata_number,
)

SCHEMA_VERSION = 2
# Version 1 lacked `vector_tombstones` and `vectors_image_sub`; the schema script adds both.
_MIGRATES_FROM = {1}

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    image_id TEXT NOT NULL,
    created_us INTEGER NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    ocr_text TEXT NOT NULL,
    UNIQUE (tenant, image_id)
);
CREATE TABLE IF NOT EXISTS metadata (
    image INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    num REAL,
    PRIMARY KEY (image, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS metadata_value ON metadata (key, value, image);
CREATE INDEX IF NOT EXISTS metadata_num ON metadata (key, num, image);
CREATE TABLE IF NOT EXISTS labels (
    image INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    name TEXT NOT NULL,
    score REAL NOT NULL,
    PRIMARY KEY (image, idx)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS labels_name ON labels (name, image);
CREATE TABLE IF NOT EXISTS objects (
    image INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    label TEXT NOT NULL,
    score REAL NOT NULL,
    x_min REAL NOT NULL, y_min REAL NOT NULL, x_max REAL NOT NULL, y_max REAL NOT NULL,
    PRIMARY KEY (image, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS faces (
    image INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    score REAL NOT NULL,
    x_min REAL NOT NULL, y_min REAL NOT NULL, x_max REAL NOT NULL, y_max REAL NOT NULL,
    PRIMARY KEY (image, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ocr_lines (
    image INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    text TEXT NOT NULL,
    confidence REAL NOT NULL,
    x_min REAL NOT NULL, y_min REAL NOT NULL, x_max REAL NOT NULL, y_max REAL NOT NULL,
    PRIMARY KEY (image, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS vectors (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    image INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    space TEXT NOT NULL,
    sub INTEGER NOT NULL,
    vec BLOB NOT NULL
);
-- Covering for the exact k-NN path: an image's vector ids and sub-record numbers without
-- reading the rows (and their BLOBs).
CREATE INDEX IF NOT EXISTS vectors_image_sub ON vectors (image, space, sub);
DROP INDEX IF EXISTS vectors_image;
CREATE INDEX IF NOT EXISTS vectors_space ON vectors (space, id);
CREATE TABLE IF NOT EXISTS vector_tombstones (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    vector INTEGER NOT NULL,
    space TEXT NOT NULL,
    tenant TEXT NOT NULL
);
CREATE VIRTUAL TABLE IF NOT EXISTS text_index USING fts5 (
    ocr, labels, objects, tokenize = 'unicode61 remove_diacritics 2'
);
"""

# The FTS5 column that each index's text lives in.
TEXT_COLUMNS = {IndexKind.OCR: "ocr", IndexKind.IMAGES: "labels", IndexKind.OBJECTS: "objects"}

_COUNT_SQL = {
    IndexKind.IMAGES: "SELECT COUNT(*) FROM images WHERE tenant = ?",
    IndexKind.FACES: "SELECT COUNT(*) FROM faces f JOIN images i ON i.id = f.image"
    " WHERE i.tenant = ?",
    IndexKind.OBJECTS: "SELECT COUNT(*) FROM objects o JOIN images i ON i.id = o.image"
    " WHERE i.tenant = ?",
    IndexKind.OCR: "SELECT COUNT(*) FROM ocr_lines l JOIN images i ON i.id = l.image"
    " WHERE i.tenant = ?",
}


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


@dataclass(frozen=True, slots=True)
class ChangeMarks:
    """How far the vectors table has come: the highest vector id and tombstone number ever
    issued. Both only grow, and a snapshot with equal marks holds the same vectors."""

    vectors: int
    tombstones: int

    def covers(self, other: ChangeMarks) -> bool:
        return self.vectors >= other.vectors and self.tombstones >= other.tombstones


def connect(path: Path) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit) with durable commits."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    # Takes effect when the file is created: a 1280-d float32 vector (5 KiB) then fits in its
    # row's page instead of spilling into overflow pages that each cost a lookup to read.
    conn.execute("PRAGMA page_size = 8192")
    conn.execute("PRAGMA journal_mode = WAL")
    # FULL: the WAL is fsynced at every commit, so an acknowledged write survives power loss
    # as well as kill -9 (NORMAL would only survive the latter).
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    # After a checkpoint the WAL is cut back to this size instead of keeping its peak size.
    conn.execute("PRAGMA journal_size_limit = 67108864")
    conn.execute("PRAGMA busy_timeout = 10000")
    # Vector BLOBs are read straight from the OS page cache (shared by every connection)
    # instead of being copied into each connection's own page cache.
    conn.execute("PRAGMA mmap_size = 1073741824")
    return conn


def create_schema(conn: sqlite3.Connection) -> None:
    conn.executescript(_SCHEMA)
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version == 0 or version in _MIGRATES_FROM:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    elif version != SCHEMA_VERSION:
        raise RuntimeError(f"store schema version {version}, this code reads {SCHEMA_VERSION}")


def _blob(vector: Vector) -> bytes:
    return vector.astype("<f4", copy=False).tobytes()


def _vector(blob: bytes) -> Vector:
    array = np.frombuffer(blob, dtype="<f4").astype(np.float32, copy=False)
    return array


def _delete_image(conn: sqlite3.Connection, image_rowid: int, tenant: str) -> None:
    conn.execute(
        "INSERT INTO vector_tombstones (vector, space, tenant)"
        " SELECT id, space, ? FROM vectors WHERE image = ? ORDER BY id",
        (tenant, image_rowid),
    )
    conn.execute("DELETE FROM text_index WHERE rowid = ?", (image_rowid,))
    conn.execute("DELETE FROM images WHERE id = ?", (image_rowid,))


def _find(conn: sqlite3.Connection, tenant: str, image_id: str) -> int | None:
    row = conn.execute(
        "SELECT id FROM images WHERE tenant = ? AND image_id = ?", (tenant, image_id)
    ).fetchone()
    return None if row is None else int(row[0])


def upsert(conn: sqlite3.Connection, batch: Sequence[ImageRecord]) -> None:
    """Replace each record and all its sub-records, the batch in one transaction (committed,
    and so durable, on return)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        for record in batch:
            _replace(conn, record)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _replace(conn: sqlite3.Connection, record: ImageRecord) -> None:
    """Delete the record's old rows and insert it anew."""
    old = _find(conn, record.tenant, record.image_id)
    if old is not None:
        _delete_image(conn, old, record.tenant)
    created_us = (record.created_at - _EPOCH) // _MICROSECOND
    cursor = conn.execute(
        "INSERT INTO images (tenant, image_id, created_us, width, height, ocr_text)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (
            record.tenant,
            record.image_id,
            created_us,
            record.width,
            record.height,
            record.ocr_text,
        ),
    )
    rowid = cursor.lastrowid
    assert rowid is not None
    conn.executemany(
        "INSERT INTO metadata (image, key, value, num) VALUES (?, ?, ?, ?)",
        [(rowid, k, v, metadata_number(v)) for k, v in record.metadata.items()],
    )
    conn.executemany(
        "INSERT INTO labels (image, idx, name, score) VALUES (?, ?, ?, ?)",
        [(rowid, i, label.name, label.score) for i, label in enumerate(record.labels)],
    )
    conn.executemany(
        "INSERT INTO objects VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [(rowid, i, o.label, o.score, *_box(o.box)) for i, o in enumerate(record.objects)],
    )
    conn.executemany(
        "INSERT INTO faces VALUES (?, ?, ?, ?, ?, ?, ?)",
        [(rowid, i, f.score, *_box(f.box)) for i, f in enumerate(record.faces)],
    )
    conn.executemany(
        "INSERT INTO ocr_lines VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (rowid, i, line.text, line.confidence, *_box(line.box))
            for i, line in enumerate(record.ocr_lines)
        ],
    )
    conn.execute(
        "INSERT INTO text_index (rowid, ocr, labels, objects) VALUES (?, ?, ?, ?)",
        (
            rowid,
            record.ocr_text,
            "\n".join(label.name for label in record.labels),
            "\n".join(o.label for o in record.objects),
        ),
    )
    wanted: list[tuple[Space, int, Vector]] = []
    if record.embedding is not None:
        wanted.append((Space.IMAGES, -1, record.embedding))
    wanted.extend((Space.FACES, i, f.embedding) for i, f in enumerate(record.faces))
    conn.executemany(
        "INSERT INTO vectors (image, space, sub, vec) VALUES (?, ?, ?, ?)",
        [(rowid, space.value, sub, _blob(vector)) for space, sub, vector in wanted],
    )


def delete(conn: sqlite3.Connection, tenant: str, image_id: str) -> bool:
    """Delete the record and everything under it; False when there was none."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        old = _find(conn, tenant, image_id)
        if old is not None:
            _delete_image(conn, old, tenant)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return old is not None


def _box(box: Box) -> tuple[float, float, float, float]:
    return (box.x_min, box.y_min, box.x_max, box.y_max)


def get(conn: sqlite3.Connection, tenant: str, image_id: str) -> ImageRecord | None:
    """The whole record, read in one transaction so a concurrent upsert is seen whole or not."""
    conn.execute("BEGIN")
    try:
        row = conn.execute(
            "SELECT id, created_us, width, height, ocr_text FROM images"
            " WHERE tenant = ? AND image_id = ?",
            (tenant, image_id),
        ).fetchone()
        if row is None:
            return None
        return _load(conn, tenant, image_id, row)
    finally:
        conn.execute("COMMIT")


def get_by_rowid(conn: sqlite3.Connection, rowid: int) -> ImageRecord:
    row = conn.execute(
        "SELECT id, created_us, width, height, ocr_text, tenant, image_id FROM images WHERE id = ?",
        (rowid,),
    ).fetchone()
    return _load(conn, row[5], row[6], row[:5])


def _load(
    conn: sqlite3.Connection, tenant: str, image_id: str, row: Sequence[object]
) -> ImageRecord:
    rowid, created_us, width, height, ocr_text = row
    assert isinstance(created_us, int)
    face_vectors = {
        sub: _vector(blob)
        for sub, blob in conn.execute(
            "SELECT sub, vec FROM vectors WHERE image = ? AND space = ?",
            (rowid, Space.FACES.value),
        )
    }
    embedding = conn.execute(
        "SELECT vec FROM vectors WHERE image = ? AND space = ?", (rowid, Space.IMAGES.value)
    ).fetchone()
    return ImageRecord(
        tenant=tenant,
        image_id=image_id,
        created_at=_EPOCH + created_us * _MICROSECOND,
        width=int(width),  # type: ignore[call-overload]
        height=int(height),  # type: ignore[call-overload]
        metadata=dict(
            conn.execute("SELECT key, value FROM metadata WHERE image = ? ORDER BY key", (rowid,))
        ),
        embedding=None if embedding is None else _vector(embedding[0]),
        labels=tuple(
            Label(name, score)
            for name, score in conn.execute(
                "SELECT name, score FROM labels WHERE image = ? ORDER BY idx", (rowid,)
            )
        ),
        objects=tuple(
            ObjectRecord(label, score, Box(*box))
            for label, score, *box in conn.execute(
                "SELECT label, score, x_min, y_min, x_max, y_max FROM objects"
                " WHERE image = ? ORDER BY idx",
                (rowid,),
            )
        ),
        faces=tuple(
            FaceRecord(Box(*box), score, face_vectors[idx])
            for idx, score, *box in conn.execute(
                "SELECT idx, score, x_min, y_min, x_max, y_max FROM faces"
                " WHERE image = ? ORDER BY idx",
                (rowid,),
            )
        ),
        ocr_lines=tuple(
            OcrLine(text, confidence, Box(*box))
            for text, confidence, *box in conn.execute(
                "SELECT text, confidence, x_min, y_min, x_max, y_max FROM ocr_lines"
                " WHERE image = ? ORDER BY idx",
                (rowid,),
            )
        ),
        ocr_text=str(ocr_text),
    )


@dataclass(frozen=True, slots=True)
class Condition:
    """One filter condition as the images it selects: `SELECT image FROM ...` and its params."""

    images_sql: str
    params: tuple[object, ...]

    def exists(self, alias: str) -> str:
        """The condition tested for one image row (a primary-key probe per image)."""
        table, _, rest = self.images_sql.removeprefix("SELECT image FROM ").partition(" WHERE ")
        return f"EXISTS (SELECT 1 FROM {table} WHERE image = {alias}.id AND {rest})"


def conditions(filters: Filters) -> list[Condition]:
    found: list[Condition] = []
    if filters.labels:
        names = sorted(filters.labels)
        found.append(
            Condition(
                f"SELECT image FROM labels WHERE name IN ({', '.join('?' * len(names))})",
                tuple(names),
            )  # fmt: skip
        )
    for key, value in sorted(filters.metadata.items()):
        found.append(Condition("SELECT image FROM metadata WHERE key = ? AND value = ?",
                               (key, value)))  # fmt: skip
    for bound in filters.ranges:
        column = "num" if bound.numeric else "value"
        parts = ["key = ?"]
        params: list[object] = [bound.key]
        if bound.gte is not None:
            parts.append(f"{column} >= ?")
            params.append(bound.gte)
        if bound.lte is not None:
            parts.append(f"{column} <= ?")
            params.append(bound.lte)
        if bound.numeric:
            parts.append("num IS NOT NULL")
        found.append(Condition(f"SELECT image FROM metadata WHERE {' AND '.join(parts)}",
                               tuple(params)))  # fmt: skip
    return found


def filter_sql(
    tenant: str, filters: Filters, alias: str = "i", skip: Condition | None = None
) -> tuple[str, list[object]]:
    """A WHERE condition over `images AS alias` for the tenant and the filters, with params;
    each filter condition is a primary-key probe, so whatever drives the query stays in charge.
    """
    clauses = [f"{alias}.tenant = ?"]
    params: list[object] = [tenant]
    for condition in conditions(filters):
        if condition != skip:  # equal, not identical: conditions() builds new ones
            clauses.append(condition.exists(alias))
            params.extend(condition.params)
    return " AND ".join(clauses), params


def condition_size(conn: sqlite3.Connection, condition: Condition, limit: int) -> int:
    """How many rows (all tenants) the condition selects, counting no further than `limit`."""
    row = conn.execute(
        f"SELECT COUNT(*) FROM ({condition.images_sql} LIMIT ?)", [*condition.params, limit]
    ).fetchone()
    return int(row[0])


def _matching_sql(
    columns: str,
    tenant: str,
    space: Space,
    filters: Filters,
    among: Sequence[int] | None,
    drive: Condition | None,
) -> tuple[str, list[object]]:
    """The query behind `matching_rows` and `matching_vectors`: see there."""
    if among is not None:
        where, params = filter_sql(tenant, filters, skip=drive)
        sql = (
            f"SELECT {columns} FROM vectors v CROSS JOIN images i ON i.id = v.image"
            f" WHERE v.id IN ({', '.join('?' * len(among))}) AND v.space = ? AND {where}"
        )
        return sql, [*among, space.value, *params]
    if drive is not None:
        where, params = filter_sql(tenant, filters, skip=drive)
        sql = (
            f"SELECT {columns} FROM (SELECT DISTINCT image FROM ({drive.images_sql})) d"
            " CROSS JOIN images i ON i.id = d.image"
            " CROSS JOIN vectors v ON v.image = i.id AND v.space = ?"
            f" WHERE {where}"
        )
        return sql, [*drive.params, space.value, *params]
    where, params = filter_sql(tenant, filters)
    sql = (
        f"SELECT {columns} FROM images i CROSS JOIN vectors v ON v.image = i.id AND v.space = ?"
        f" WHERE {where}"
    )
    return sql, [space.value, *params]


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
    conn.execute("BEGIN IMMEDIATE")
    try:
        newest = change_marks(conn).tombstones
        cursor = conn.execute("DELETE FROM vector_tombstones WHERE seq <= ?", (newest - keep,))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return int(cursor.rowcount)


def tenant_counts(conn: sqlite3.Connection, space: Space) -> dict[str, int]:
    """Vectors per tenant in the space; a cache keeps them current as it follows the table."""
    rows = conn.execute(
        "SELECT i.tenant, COUNT(*) FROM vectors v CROSS JOIN images i ON i.id = v.image"
        " WHERE v.space = ? GROUP BY i.tenant",
        (space.value,),
    )
    return {tenant: int(n) for tenant, n in rows}


def face_boxes(conn: sqlite3.Connection, vector_ids: Iterable[int]) -> dict[int, Box]:
    ids = list(vector_ids)
    if not ids:
        return {}
    rows = conn.execute(
        "SELECT v.id, f.x_min, f.y_min, f.x_max, f.y_max FROM vectors v"
        " JOIN faces f ON f.image = v.image AND f.idx = v.sub"
        f" WHERE v.id IN ({', '.join('?' * len(ids))})",
        ids,
    )
    return {row[0]: Box(*row[1:]) for row in rows}


def space_ids(conn: sqlite3.Connection, space: Space) -> npt.NDArray[np.int64]:
    rows = conn.execute("SELECT id FROM vectors WHERE space = ? ORDER BY id", (space.value,))
    return np.fromiter((row[0] for row in rows), dtype=np.int64)


def space_version(conn: sqlite3.Connection, space: Space) -> tuple[int, int]:
    """(highest vector id ever issued, vectors in the space): equal pairs mean equal id sets,
    because ids only grow and any delete lowers the count."""
    seq = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'vectors'").fetchone()
    count = conn.execute("SELECT COUNT(*) FROM vectors WHERE space = ?", (space.value,)).fetchone()
    return (0 if seq is None else int(seq[0])), int(count[0])


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


def count(conn: sqlite3.Connection, tenant: str, kind: IndexKind) -> int:
    return int(conn.execute(_COUNT_SQL[kind], (tenant,)).fetchone()[0])


@dataclass(frozen=True, slots=True)
class TextRow:
    rowid: int
    image_id: str
    score: float


def search_text(
    conn: sqlite3.Connection,
    tenant: str,
    query_terms: Sequence[str],
    columns: Sequence[str],
    filters: Filters,
    limit: int,
    offset: int,
) -> list[TextRow]:
    """Images ranked by FTS5 bm25() over the columns, any term matching; ties by image id."""
    phrase = " OR ".join(f'"{term}"' for term in query_terms)
    expression = "{" + " ".join(columns) + "} : (" + phrase + ")"
    where, params = filter_sql(tenant, filters)
    rows = conn.execute(
        "SELECT i.id, i.image_id, bm25(text_index) AS rank FROM text_index"
        " JOIN images i ON i.id = text_index.rowid"
        f" WHERE text_index MATCH ? AND {where}"
        " ORDER BY rank, i.image_id LIMIT ? OFFSET ?",
        [expression, *params, limit, offset],
    )
    # bm25() is lower-is-better; negate it so every store's scores read higher-is-better.
    return [TextRow(rowid, image_id, -rank) for rowid, image_id, rank in rows]


def kind_of(space: Space) -> IndexKind:
    return SPACE_KIND[space]
