"""Text-search terms and "which part matched", shared by both backends.

A query is split into terms the way SQLite FTS5's unicode61 tokenizer and OpenSearch's standard
analyzer both split plain words (letters and digits; case and diacritics folded), so the two
backends agree on which OCR lines and labels a hit matched. Terms of three or more characters
also match inside words ("arbou" in "Harbour"): both backends index folded text in three-letter
pieces for that.
"""

from __future__ import annotations

import re
import unicodedata

from server.store.base import ImageRecord, MatchKind, TextMatch

MAX_QUERY_TERMS = 32
# Shorter terms match whole words only: a part of one or two letters matches almost anything.
MIN_PART_CHARS = 3

_TERM = re.compile(r"[^\W_]+")


def fold(text: str) -> str:
    """`text` without diacritics, in lower case: what both tokenizers compare."""
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    # lower(), not casefold(): FTS5 folds case one character at a time ("ß" stays "ß").
    return stripped.lower()


def terms(text: str) -> tuple[str, ...]:
    """Distinct folded terms of `text`, in order of first appearance."""
    return tuple(dict.fromkeys(m.group(0) for m in _TERM.finditer(fold(text))))


def part_terms(query_terms: tuple[str, ...]) -> tuple[str, ...]:
    """The terms long enough to be matched inside words (a trigram needs three letters)."""
    return tuple(term for term in query_terms if len(term) >= MIN_PART_CHARS)


def _holds(text: str, wanted: set[str], parts: tuple[str, ...]) -> bool:
    """Whether `text` has a wanted term as a word, or one of `parts` inside a word."""
    if wanted.intersection(terms(text)):
        return True
    folded = fold(text)
    return any(part in folded for part in parts)


def matches(
    record: ImageRecord, query_terms: tuple[str, ...], kinds: frozenset[MatchKind]
) -> tuple[TextMatch, ...]:
    """The OCR lines, image labels and object labels of `record` holding any query term, as a
    word or (terms of MIN_PART_CHARS or more) inside a word."""
    wanted = set(query_terms)
    parts = part_terms(query_terms)
    found: list[TextMatch] = []
    if MatchKind.OCR_LINE in kinds:
        for i, line in enumerate(record.ocr_lines):
            if _holds(line.text, wanted, parts):
                found.append(TextMatch(MatchKind.OCR_LINE, i, line.text, line.box))
    if MatchKind.LABEL in kinds:
        for i, label in enumerate(record.labels):
            if _holds(label.name, wanted, parts):
                found.append(TextMatch(MatchKind.LABEL, i, label.name))
    if MatchKind.OBJECT in kinds:
        for i, obj in enumerate(record.objects):
            if _holds(obj.label, wanted, parts):
                found.append(TextMatch(MatchKind.OBJECT, i, obj.label, obj.box))
    return tuple(found)
