"""Synthetic records and exact answers for the vector store tests and bench/store.py.

Vectors are clustered (Gaussian blobs around random centres), like real embeddings: uniformly
random vectors make every ANN index look perfect or hopeless and say nothing about recall.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import numpy.typing as npt

from server.domain import Box
from server.store import FaceRecord, ImageRecord, Label, ObjectRecord, OcrLine

BASE_TIME = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)


def clustered(
    rng: np.random.Generator, n: int, dim: int, clusters: int = 50, spread: float = 0.35
) -> npt.NDArray[np.float32]:
    """`n` vectors around `clusters` random unit centres, each offset by `spread` per unit."""
    centres = rng.standard_normal((clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    which = rng.integers(0, clusters, n)
    noise = rng.standard_normal((n, dim)) * (spread / np.sqrt(dim))
    drawn: npt.NDArray[np.float32] = (centres[which] + noise).astype(np.float32)
    return drawn


def exact_top(
    matrix: npt.NDArray[np.float32], ids: list[str], query: npt.NDArray[np.float32], k: int
) -> list[str]:
    """The k ids of highest cosine similarity (float64), ties by id: the reference answer."""
    m = matrix.astype(np.float64)
    q = query.astype(np.float64)
    scores = (m @ q) / (np.linalg.norm(m, axis=1) * np.linalg.norm(q))
    order = sorted(range(len(ids)), key=lambda i: (-scores[i], ids[i]))
    return [ids[i] for i in order[:k]]


def record(
    tenant: str,
    image_id: str,
    embedding: npt.NDArray[np.float32] | None,
    *,
    faces: list[npt.NDArray[np.float32]] | None = None,
    labels: tuple[str, ...] = (),
    objects: tuple[str, ...] = (),
    ocr: tuple[str, ...] = (),
    metadata: dict[str, str] | None = None,
    offset_s: int = 0,
    people: tuple[str, ...] = (),
    content_sha256: str = "",
) -> ImageRecord:
    """A complete record whose sub-records are derived from the arguments deterministically;
    `people[i]` is the person of face i (faces past its end have none)."""
    return ImageRecord(
        tenant=tenant,
        image_id=image_id,
        created_at=BASE_TIME + timedelta(seconds=offset_s),
        width=640,
        height=480,
        metadata=metadata or {},
        embedding=embedding,
        labels=tuple(Label(name, round(0.9 - 0.1 * i, 3)) for i, name in enumerate(labels)),
        objects=tuple(
            ObjectRecord(name, 0.8, Box(10.0 * i, 20.0, 10.0 * i + 50, 90.0))
            for i, name in enumerate(objects)
        ),
        faces=tuple(
            FaceRecord(Box(5.0 * i, 5.0, 5.0 * i + 40, 60.0), 0.95, vector,
                       people[i] if i < len(people) else "")  # fmt: skip
            for i, vector in enumerate(faces or [])
        ),
        ocr_lines=tuple(
            OcrLine(line, 0.9, Box(0.0, 30.0 * i, 300.0, 30.0 * i + 25))
            for i, line in enumerate(ocr)
        ),
        ocr_text="\n".join(ocr),
        content_sha256=content_sha256,
    )
