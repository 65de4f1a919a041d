"""How a record becomes OpenSearch documents and comes back: `_source` bodies and `_bulk` lines.

The image document carries the whole record in `_source` (so `get` is one request) plus the
searchable fields: BM25 text fields for OCR text and label names, keyword fields for filters.
Each face, object and OCR line is its own document with a deterministic id (`<key>-f3`) and a
copy of the image's filter fields, so a re-ingest overwrites sub-documents in place and then
deletes the ones past the new counts: never duplicates, even when a step is retried.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from server.domain import Box
from server.store.base import (
    FaceRecord,
    ImageRecord,
    IndexKind,
    Label,
    ObjectRecord,
    OcrLine,
    Vector,
    frozen_vector,
    metadata_number,
)
from server.store.opensearch.mappings import POSITION, Json, alias

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def doc_key(tenant: str, image_id: str) -> str:
    """The image document's _id: fixed length whatever the ids (an _id is at most 512 bytes);
    also the _id of a person's name document, from the person id."""
    return hashlib.sha256(f"{len(tenant)}:{tenant}{image_id}".encode()).hexdigest()


def created_us(when: datetime) -> int:
    return (when - _EPOCH) // _MICROSECOND


def _box(box: Box) -> list[float]:
    return [box.x_min, box.y_min, box.x_max, box.y_max]


def unbox(values: Sequence[float]) -> Box:
    return Box(*(float(v) for v in values))


def _metadata_entries(metadata: Mapping[str, str]) -> list[Json]:
    return [
        {"key": k, "value": v} | ({} if (n := metadata_number(v)) is None else {"num": n})
        for k, v in sorted(metadata.items())
    ]


def vector_json(vector: Vector) -> list[float]:
    # float32 -> Python float is exact, and so is the way back: get() returns the same bits.
    return [float(x) for x in vector]


def documents(prefix: str, record: ImageRecord) -> list[tuple[str, str, Json]]:
    """(index alias, _id, source) of every document the record is stored as."""
    key = doc_key(record.tenant, record.image_id)
    common: Json = {
        "tenant": record.tenant,
        "image_id": record.image_id,
        "image_key": key,
        "created_at": record.created_at.isoformat(),
        "created_us": created_us(record.created_at),
        "label_names": sorted({label.name for label in record.labels}),
        "person_ids": sorted({f.person_id for f in record.faces if f.person_id}),
        "metadata": _metadata_entries(record.metadata),
    }
    image: Json = common | {
        "ocr_text": record.ocr_text,
        "label_text": "\n".join(label.name for label in record.labels),
        "object_text": "\n".join(o.label for o in record.objects),
        "content_sha256": record.content_sha256,
        "record": {
            "duplicate_of": record.duplicate_of,
            "width": record.width,
            "height": record.height,
            "metadata": dict(record.metadata),
            "labels": [[label.name, label.score] for label in record.labels],
            "objects": [[o.label, o.score, _box(o.box)] for o in record.objects],
            "faces": [[f.score, _box(f.box), vector_json(f.embedding), f.person_id]
                      for f in record.faces],  # fmt: skip
            "ocr_lines": [[li.text, li.confidence, _box(li.box)] for li in record.ocr_lines],
        },
    }
    if record.embedding is not None:
        image["embedding"] = vector_json(record.embedding)
    docs = [(alias(prefix, IndexKind.IMAGES), key, image)]

    def part(kind: IndexKind, suffix: str, i: int, score: float, box: Box, own: Json) -> None:
        source = common | {"kind": kind.value, POSITION: i, "score": score, "box": _box(box)}
        docs.append((alias(prefix, kind), f"{key}-{suffix}{i}", source | own))

    for i, face in enumerate(record.faces):
        part(IndexKind.FACES, "f", i, face.score, face.box,
             {"embedding": vector_json(face.embedding), "person_id": face.person_id})
    for i, obj in enumerate(record.objects):
        part(IndexKind.OBJECTS, "o", i, obj.score, obj.box, {"label": obj.label})
    for i, line in enumerate(record.ocr_lines):
        part(IndexKind.OCR, "l", i, line.confidence, line.box, {"text": line.text})
    return docs


def record_from_source(source: Mapping[str, Any]) -> ImageRecord:
    stored = source["record"]
    embedding = source.get("embedding")
    return ImageRecord(
        tenant=source["tenant"],
        image_id=source["image_id"],
        created_at=datetime.fromisoformat(source["created_at"]),
        width=stored["width"],
        height=stored["height"],
        metadata=stored["metadata"],
        embedding=None if embedding is None else frozen_vector(embedding),
        labels=tuple(Label(name, score) for name, score in stored["labels"]),
        objects=tuple(ObjectRecord(lb, s, unbox(b)) for lb, s, b in stored["objects"]),
        faces=tuple(FaceRecord(unbox(b), s, frozen_vector(e), p) for s, b, e, p in stored["faces"]),
        ocr_lines=tuple(OcrLine(t, c, unbox(b)) for t, c, b in stored["ocr_lines"]),
        ocr_text=source["ocr_text"],
        content_sha256=source["content_sha256"],
        duplicate_of=stored["duplicate_of"],
    )


def bulk_lines(docs: Sequence[tuple[str, str, Json]]) -> list[Json]:
    """The `_bulk` body: an `index` action line then the document, per document."""
    lines: list[Json] = []
    for index, doc_id, source in docs:
        lines.append({"index": {"_index": index, "_id": doc_id}})
        lines.append(source)
    return lines
