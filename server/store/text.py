"""Text-search terms and "which part matched", shared by both backends.

A query is split into terms the way SQLite FTS5's unicode61 tokenizer and OpenSearch's standard
analyzer both split plain words (letters and digits; case and diacritics folded), so the two
backends agree on which OCR lines and labels a hit matched.
"""

from __future__ import annotations

import re
import unicodedata

from server.store.base import ImageRecord, MatchKind, TextMatch

MAX_QUERY_TERMS = 32

_TERM = re.compile(r"[^\W_]+")


def terms(text: str) -> tuple[str, ...]:
    """Distinct folded terms of `text`, in order of first appearance."""
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    # lower(), not casefold(): FTS5 folds case one character at a time ("ß" stays "ß").
    return tuple(dict.fromkeys(m.group(0).lower() for m in _TERM.finditer(stripped)))


def matches(
    record: ImageRecord, query_terms: tuple[str, ...], kinds: frozenset[MatchKind]
) -> tuple[TextMatch, ...]:
    """The OCR lines, image labels and object labels of `record` holding any query term."""
    wanted = set(query_terms)
    found: list[TextMatch] = []
    if MatchKind.OCR_LINE in kinds:
        for i, line in enumerate(record.ocr_lines):
            if wanted.intersection(terms(line.text)):
                found.append(TextMatch(MatchKind.OCR_LINE, i, line.text, line.box))
    if MatchKind.LABEL in kinds:
        for i, label in enumerate(record.labels):
            if wanted.intersection(terms(label.name)):
                found.append(TextMatch(MatchKind.LABEL, i, label.name))
    if MatchKind.OBJECT in kinds:
        for i, obj in enumerate(record.objects):
            if wanted.intersection(terms(obj.label)):
                found.append(TextMatch(MatchKind.OBJECT, i, obj.label, obj.box))
    return tuple(found)
