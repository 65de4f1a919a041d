"""The embedded store's SQL building blocks: transactions, filter parts, schema migration."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from server.store import Filters, MetadataRange, StoreConfig, open_store
from server.store.embedded.filters import Condition, conditions, where
from server.store.embedded.schema import connect, transaction
from tests.contract.store_data import record


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


# The tables that schema version 3 changed, as version 2 created them.
_VERSION_2 = """
CREATE TABLE images (
    id INTEGER PRIMARY KEY AUTOINCREMENT, tenant TEXT NOT NULL, image_id TEXT NOT NULL,
    created_us INTEGER NOT NULL, width INTEGER NOT NULL, height INTEGER NOT NULL,
    ocr_text TEXT NOT NULL, UNIQUE (tenant, image_id));
CREATE TABLE faces (
    image INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE, idx INTEGER NOT NULL,
    score REAL NOT NULL,
    x_min REAL NOT NULL, y_min REAL NOT NULL, x_max REAL NOT NULL, y_max REAL NOT NULL,
    PRIMARY KEY (image, idx)) WITHOUT ROWID;
CREATE TABLE vectors (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    image INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    space TEXT NOT NULL, sub INTEGER NOT NULL, vec BLOB NOT NULL);
CREATE VIRTUAL TABLE text_index USING fts5 (
    ocr, labels, objects, tokenize = 'unicode61 remove_diacritics 2');
INSERT INTO images VALUES (1, 'acme', 'old', 0, 640, 480, 'Old Harbour');
INSERT INTO faces VALUES (1, 0, 0.9, 1, 2, 3, 4);
INSERT INTO text_index (rowid, ocr, labels, objects) VALUES (1, 'Old Harbour', '', '');
PRAGMA user_version = 2;
"""


async def test_a_version_2_file_is_migrated_and_searchable_by_parts(tmp_path: Path) -> None:
    directory = tmp_path / "store"
    directory.mkdir()
    old = sqlite3.connect(directory / "store.sqlite3")
    old.executescript(_VERSION_2)
    face = np.ones(128, dtype="<f4").tobytes()
    old.execute("INSERT INTO vectors (image, space, sub, vec) VALUES (1, 'faces', 0, ?)", (face,))
    old.commit()
    old.close()
    store = await open_store(StoreConfig(path=directory))
    try:
        stored = await store.get("acme", "old")
        assert stored is not None
        assert (stored.content_sha256, stored.duplicate_of) == ("", "")
        assert [f.person_id for f in stored.faces] == [""]
        assert [h.image_id for h in await store.search_text("acme", "arbou", 5)] == ["old"]
        assert await store.list_people("acme", 5) == ()
    finally:
        await store.close()
    again = await open_store(StoreConfig(path=directory))  # version 3 now: opened as it is
    await again.close()


async def test_names_and_merges_survive_a_restart(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    faces = [rng.standard_normal(128).astype(np.float32) for _ in range(2)]
    config = StoreConfig(path=tmp_path / "store")
    store = await open_store(config)
    try:
        await store.upsert(record("acme", "a", None, faces=faces, people=("p-1", "p-2")))
        await store.rename_person("acme", "p-1", "Ann")
        await store.merge_people("acme", frozenset({"p-2"}), "p-1")
    finally:
        await store.close()
    store = await open_store(config)
    try:
        person = await store.get_person("acme", "p-1")
        assert person is not None and (person.name, person.face_count) == ("Ann", 2)
        assert await store.get_person("acme", "p-2") is None
    finally:
        await store.close()
