"""The embedded store's SQL building blocks: the transaction context manager and filter parts."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from server.store import Filters, MetadataRange
from server.store.embedded.filters import Condition, conditions, where
from server.store.embedded.schema import connect, transaction


def test_transaction_commits_or_rolls_back_whole(tmp_path: Path) -> None:
    conn = connect(tmp_path / "t.sqlite3")
    conn.execute("CREATE TABLE t (x INTEGER)")
    with transaction(conn, write=True):
        conn.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(KeyError), transaction(conn, write=True):
        conn.execute("INSERT INTO t VALUES (2)")
        raise KeyError("cancelled half-way")
    assert not conn.in_transaction
    assert conn.execute("SELECT x FROM t").fetchall() == [(1,)]


def test_transaction_survives_a_rollback_sqlite_already_made(tmp_path: Path) -> None:
    conn = connect(tmp_path / "t.sqlite3")
    with pytest.raises(sqlite3.OperationalError, match="no such table"), transaction(conn):
        conn.execute("ROLLBACK")  # what SQLite does by itself on SQLITE_FULL
        conn.execute("SELECT * FROM missing")
    assert not conn.in_transaction


def test_filters_compile_to_parts_in_both_shapes() -> None:
    filters = Filters(labels=frozenset({"dog", "cat"}), metadata={"camera": "x100"},
                      ranges=(MetadataRange("year", gte=2020),))  # fmt: skip
    found = conditions(filters)
    assert found == [
        Condition("labels", ("name IN (?, ?)",), ("cat", "dog")),
        Condition("metadata", ("key = ?", "value = ?"), ("camera", "x100")),
        Condition("metadata", ("key = ?", "num >= ?", "num IS NOT NULL"), ("year", 2020)),
    ]
    assert found[1].images_sql == "SELECT image FROM metadata WHERE key = ? AND value = ?"
    assert found[1].exists("i") == (
        "EXISTS (SELECT 1 FROM metadata WHERE image = i.id AND key = ? AND value = ?)"
    )
    clause = where("acme", filters, skip=found[0])
    assert clause.clauses[0] == "i.tenant = ?"
    assert len(clause.clauses) == 3
    assert clause.params == ("acme", "camera", "x100", "year", 2020)
