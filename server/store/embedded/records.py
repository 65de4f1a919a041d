"""The embedded store's writes and reads of whole records: replace, delete, get, count.

Blocking functions over one `sqlite3.Connection` each; the store decides which thread runs them.
A replaced or deleted image's vectors leave tombstones (changes.py) so that every process's HNSW
caches can follow.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import numpy as np

from server.domain import Box
from server.store import text
from server.store.base import (
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
from server.store.embedded.filters import where
from server.store.embedded.schema import transaction

_IMAGE_COLUMNS = "id, created_us, width, height, ocr_text, content_sha256, duplicate_of"

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

_COUNT_SQL = {
    IndexKind.IMAGES: "SELECT COUNT(*) FROM images WHERE tenant = ?",
    IndexKind.FACES: "SELECT COUNT(*) FROM faces f JOIN images i ON i.id = f.image"
    " WHERE i.tenant = ?",
    IndexKind.OBJECTS: "SELECT COUNT(*) FROM objects o JOIN images i ON i.id = o.image"
    " WHERE i.tenant = ?",
    IndexKind.OCR: "SELECT COUNT(*) FROM ocr_lines l JOIN images i ON i.id = l.image"
    " WHERE i.tenant = ?",
}


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
    conn.execute("DELETE FROM text_parts WHERE rowid = ?", (image_rowid,))
    conn.execute("DELETE FROM images WHERE id = ?", (image_rowid,))


def _find(conn: sqlite3.Connection, tenant: str, image_id: str) -> int | None:
    row = conn.execute(
        "SELECT id FROM images WHERE tenant = ? AND image_id = ?", (tenant, image_id)
    ).fetchone()
    return None if row is None else int(row[0])


def upsert(conn: sqlite3.Connection, batch: Sequence[ImageRecord]) -> None:
    """Replace each record and all its sub-records, the batch in one transaction (committed,
    and so durable, on return)."""
    with transaction(conn, write=True):
        for record in batch:
            _replace(conn, record)


def _replace(conn: sqlite3.Connection, record: ImageRecord) -> None:
    """Delete the record's old rows and insert it anew."""
    old = _find(conn, record.tenant, record.image_id)
    if old is not None:
        _delete_image(conn, old, record.tenant)
    created_us = (record.created_at - _EPOCH) // _MICROSECOND
    cursor = conn.execute(
        "INSERT INTO images (tenant, image_id, created_us, width, height, ocr_text,"
        " content_sha256, duplicate_of) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            record.tenant,
            record.image_id,
            created_us,
            record.width,
            record.height,
            record.ocr_text,
            record.content_sha256,
            record.duplicate_of,
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
        "INSERT INTO faces (image, idx, score, x_min, y_min, x_max, y_max, person_id)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [(rowid, i, f.score, *_box(f.box), f.person_id) for i, f in enumerate(record.faces)],
    )
    conn.executemany(
        "INSERT INTO ocr_lines VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (rowid, i, line.text, line.confidence, *_box(line.box))
            for i, line in enumerate(record.ocr_lines)
        ],
    )
    texts = (
        record.ocr_text,
        "\n".join(label.name for label in record.labels),
        "\n".join(o.label for o in record.objects),
    )
    conn.execute(
        "INSERT INTO text_index (rowid, ocr, labels, objects) VALUES (?, ?, ?, ?)",
        (rowid, *texts),
    )
    conn.execute(
        "INSERT INTO text_parts (rowid, ocr, labels, objects) VALUES (?, ?, ?, ?)",
        (rowid, *map(text.fold, texts)),
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
    with transaction(conn, write=True):
        old = _find(conn, tenant, image_id)
        if old is not None:
            _delete_image(conn, old, tenant)
    return old is not None


def _box(box: Box) -> tuple[float, float, float, float]:
    return (box.x_min, box.y_min, box.x_max, box.y_max)


def get(conn: sqlite3.Connection, tenant: str, image_id: str) -> ImageRecord | None:
    """The whole record, read in one transaction so a concurrent upsert is seen whole or not."""
    with transaction(conn):
        row = conn.execute(
            f"SELECT {_IMAGE_COLUMNS} FROM images"
            " WHERE tenant = ? AND image_id = ?",
            (tenant, image_id),
        ).fetchone()
        if row is None:
            return None
        return _load(conn, tenant, image_id, row)


def get_by_rowid(conn: sqlite3.Connection, rowid: int) -> ImageRecord:
    row = conn.execute(
        f"SELECT {_IMAGE_COLUMNS}, tenant, image_id FROM images WHERE id = ?", (rowid,)
    ).fetchone()
    return _load(conn, row[-2], row[-1], row[:-2])


def _load(
    conn: sqlite3.Connection, tenant: str, image_id: str, row: Sequence[object]
) -> ImageRecord:
    rowid, created_us, width, height, ocr_text, content_sha256, duplicate_of = row
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
            FaceRecord(Box(*box), score, face_vectors[idx], person_id)
            for idx, score, person_id, *box in conn.execute(
                "SELECT idx, score, person_id, x_min, y_min, x_max, y_max FROM faces"
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
        content_sha256=str(content_sha256),
        duplicate_of=str(duplicate_of),
    )


def count(conn: sqlite3.Connection, tenant: str, kind: IndexKind) -> int:
    return int(conn.execute(_COUNT_SQL[kind], (tenant,)).fetchone()[0])


def browse(
    conn: sqlite3.Connection, tenant: str, filters: Filters, limit: int, offset: int
) -> list[tuple[str, datetime]]:
    """(image id, created_at) of the matching images, newest first, ties by image id."""
    cond = where(tenant, filters)
    rows = conn.execute(
        f"SELECT i.image_id, i.created_us FROM images i WHERE {cond.sql}"
        " ORDER BY i.created_us DESC, i.image_id LIMIT ? OFFSET ?",
        [*cond.params, limit, offset],
    )
    return [(image_id, _EPOCH + created_us * _MICROSECOND) for image_id, created_us in rows]


def same_bytes(
    conn: sqlite3.Connection, tenant: str, content_sha256: str, exclude_id: str
) -> str | None:
    """The earliest stored image of the tenant with these bytes, other than `exclude_id`."""
    row = conn.execute(
        "SELECT image_id FROM images WHERE tenant = ? AND content_sha256 = ? AND image_id != ?"
        " ORDER BY created_us, image_id LIMIT 1",
        (tenant, content_sha256, exclude_id),
    ).fetchone()
    return None if row is None else str(row[0])
