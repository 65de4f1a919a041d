"""Full-text search over OCR text and labels: FTS5 ranked by bm25(), filtered like k-NN."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

from server.store.base import Filters, IndexKind
from server.store.embedded.filters import where

# The FTS5 column that each index's text lives in.
TEXT_COLUMNS = {IndexKind.OCR: "ocr", IndexKind.IMAGES: "labels", IndexKind.OBJECTS: "objects"}


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
    cond = where(tenant, filters)
    rows = conn.execute(
        "SELECT i.id, i.image_id, bm25(text_index) AS rank FROM text_index"
        " JOIN images i ON i.id = text_index.rowid"
        f" WHERE text_index MATCH ? AND {cond.sql}"
        " ORDER BY rank, i.image_id LIMIT ? OFFSET ?",
        [expression, *cond.params, limit, offset],
    )
    # bm25() is lower-is-better; negate it so every store's scores read higher-is-better.
    return [TextRow(rowid, image_id, -rank) for rowid, image_id, rank in rows]
