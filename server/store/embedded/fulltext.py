"""Full-text search over OCR text and labels: FTS5 ranked by bm25(), filtered like k-NN."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

from server.store import text
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
    """Images ranked by FTS5 bm25() over the columns, any term matching as a word; then the
    images where only parts of words match (`text_parts`, terms of 3 or more characters),
    ranked by bm25() over the pieces; ties by image id. Scores: see `TextHit`."""
    parts = text.part_terms(tuple(query_terms))
    cond = where(tenant, filters)
    # bm25() is lower-is-better and negative; negated, whole-word scores are > 0, and partial
    # ones are mapped into (-1, 0) so that every whole-word hit ranks first.
    found = (
        "SELECT rowid AS id, -bm25(text_index) AS score FROM text_index"
        " WHERE text_index MATCH ?"
    )
    args: list[object] = [_expression(columns, query_terms)]
    if parts:
        found += (
            " UNION ALL SELECT rowid, -1.0 / (1.0 - bm25(text_parts)) FROM text_parts"
            " WHERE text_parts MATCH ? AND rowid NOT IN"
            " (SELECT rowid FROM text_index WHERE text_index MATCH ?)"
        )
        args += [_expression(columns, parts), args[0]]
    rows = conn.execute(
        f"SELECT i.id, i.image_id, f.score FROM ({found}) f JOIN images i ON i.id = f.id"
        f" WHERE {cond.sql} ORDER BY f.score DESC, i.image_id LIMIT ? OFFSET ?",
        [*args, *cond.params, limit, offset],
    )
    return [TextRow(rowid, image_id, score) for rowid, image_id, score in rows]


def _expression(columns: Sequence[str], query_terms: Sequence[str]) -> str:
    """An FTS5 query: any of the terms (each a quoted phrase) in any of the columns."""
    phrase = " OR ".join(f'"{term}"' for term in query_terms)
    return "{" + " ".join(columns) + "} : (" + phrase + ")"
