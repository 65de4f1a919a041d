"""Query terms and "which part matched" for text search, shared by both store backends."""

from __future__ import annotations

from server.store import MatchKind
from server.store.text import matches, terms
from tests.contract.store_data import record


def test_terms_fold_case_and_accents_and_split_like_fts5_unicode61() -> None:
    assert terms("Café, CAFÉ straße_x 12.50 naïve-Résumé") == (
        "cafe",
        "straße",
        "x",
        "12",
        "50",
        "naive",
        "resume",
    )
    assert terms("  ...  ") == ()


def test_matches_name_the_lines_and_labels_holding_a_term_in_record_order() -> None:
    r = record(
        "acme",
        "img",
        None,
        ocr=("Total: 12.50", "Thank you", "TOTAL due"),
        labels=("cash register", "receipt"),
        objects=("register", "cup"),
    )
    found = matches(r, terms("total register"), frozenset(MatchKind))
    assert [(m.kind, m.index, m.text) for m in found] == [
        (MatchKind.OCR_LINE, 0, "Total: 12.50"),
        (MatchKind.OCR_LINE, 2, "TOTAL due"),
        (MatchKind.LABEL, 0, "cash register"),
        (MatchKind.OBJECT, 0, "register"),
    ]
    only_labels = matches(r, terms("total register"), frozenset({MatchKind.LABEL}))
    assert [(m.kind, m.index) for m in only_labels] == [(MatchKind.LABEL, 0)]
