"""The embedded store's SQLite file: its schema and migration, how a connection is opened, and
the one transaction context manager every statement group runs in.

One image is one row in `images`; its labels, objects, faces, OCR lines and metadata are child
rows deleted with it (ON DELETE CASCADE); its vectors are rows of `vectors` whose ids, never
reused (AUTOINCREMENT), are the keys of the HNSW caches; its OCR text and label names are one
row of the FTS5 table `text_index` with the image's row id. Deleting a vector leaves a row in
`vector_tombstones` for the other processes' caches to follow (changes.py).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

SCHEMA_VERSION = 3
# Version 1 lacked `vector_tombstones` and `vectors_image_sub` (the schema statements add both);
# version 2 lacked the columns of _ADDED_COLUMNS, the `people` names and the `text_parts` index.
_MIGRATES_FROM = {1, 2}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    image_id TEXT NOT NULL,
    created_us INTEGER NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    ocr_text TEXT NOT NULL,
    content_sha256 TEXT NOT NULL DEFAULT '',
    duplicate_of TEXT NOT NULL DEFAULT '',
    UNIQUE (tenant, image_id)
);
CREATE TABLE IF NOT EXISTS metadata (
    image INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    num REAL,
    PRIMARY KEY (image, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS metadata_value ON metadata (key, value, image);
CREATE INDEX IF NOT EXISTS metadata_num ON metadata (key, num, image);
CREATE TABLE IF NOT EXISTS labels (
    image INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    name TEXT NOT NULL,
    score REAL NOT NULL,
    PRIMARY KEY (image, idx)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS labels_name ON labels (name, image);
CREATE TABLE IF NOT EXISTS objects (
    image INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    label TEXT NOT NULL,
    score REAL NOT NULL,
    x_min REAL NOT NULL, y_min REAL NOT NULL, x_max REAL NOT NULL, y_max REAL NOT NULL,
    PRIMARY KEY (image, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS faces (
    image INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    score REAL NOT NULL,
    x_min REAL NOT NULL, y_min REAL NOT NULL, x_max REAL NOT NULL, y_max REAL NOT NULL,
    person_id TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (image, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ocr_lines (
    image INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    text TEXT NOT NULL,
    confidence REAL NOT NULL,
    x_min REAL NOT NULL, y_min REAL NOT NULL, x_max REAL NOT NULL, y_max REAL NOT NULL,
    PRIMARY KEY (image, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS vectors (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    image INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    space TEXT NOT NULL,
    sub INTEGER NOT NULL,
    vec BLOB NOT NULL
);
-- Covering for the exact k-NN path: an image's vector ids and sub-record numbers without
-- reading the rows (and their BLOBs).
CREATE INDEX IF NOT EXISTS vectors_image_sub ON vectors (image, space, sub);
DROP INDEX IF EXISTS vectors_image;
CREATE INDEX IF NOT EXISTS vectors_space ON vectors (space, id);
CREATE TABLE IF NOT EXISTS vector_tombstones (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    vector INTEGER NOT NULL,
    space TEXT NOT NULL,
    tenant TEXT NOT NULL
);
CREATE VIRTUAL TABLE IF NOT EXISTS text_index USING fts5 (
    ocr, labels, objects, tokenize = 'unicode61 remove_diacritics 2'
);
-- The same text folded (text.fold: no diacritics, lower case) in three-letter pieces, so that a
-- term matches inside words; trigram's own diacritics folding needs SQLite 3.45.
CREATE VIRTUAL TABLE IF NOT EXISTS text_parts USING fts5 (
    ocr, labels, objects, tokenize = 'trigram'
);
-- Person names, apart from the faces: a name outlives re-ingests of the person's images.
CREATE TABLE IF NOT EXISTS people (
    tenant TEXT NOT NULL,
    person_id TEXT NOT NULL,
    name TEXT NOT NULL,
    PRIMARY KEY (tenant, person_id)
) WITHOUT ROWID
"""

# Columns a version-2 file lacks; created with the tables in a new file.
_ADDED_COLUMNS = (
    ("images", "content_sha256", "TEXT NOT NULL DEFAULT ''"),
    ("images", "duplicate_of", "TEXT NOT NULL DEFAULT ''"),
    ("faces", "person_id", "TEXT NOT NULL DEFAULT ''"),
)

# Indexes over those columns, created once they exist.
_INDEXES = """
CREATE INDEX IF NOT EXISTS images_newest ON images (tenant, created_us DESC, image_id);
CREATE INDEX IF NOT EXISTS images_sha256 ON images (tenant, content_sha256, created_us);
CREATE INDEX IF NOT EXISTS faces_person ON faces (person_id, image)
"""


def connect(path: Path) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit) with durable commits."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    # Takes effect when the file is created: a 1280-d float32 vector (5 KiB) then fits in its
    # row's page instead of spilling into overflow pages that each cost a lookup to read.
    conn.execute("PRAGMA page_size = 8192")
    conn.execute("PRAGMA journal_mode = WAL")
    # FULL: the WAL is fsynced at every commit, so an acknowledged write survives power loss
    # as well as kill -9 (NORMAL would only survive the latter).
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    # After a checkpoint the WAL is cut back to this size instead of keeping its peak size.
    conn.execute("PRAGMA journal_size_limit = 67108864")
    conn.execute("PRAGMA busy_timeout = 10000")
    # Vector BLOBs are read straight from the OS page cache (shared by every connection)
    # instead of being copied into each connection's own page cache.
    conn.execute("PRAGMA mmap_size = 1073741824")
    return conn


def create_schema(conn: sqlite3.Connection, fold: Callable[[str], str]) -> None:
    """Create the schema, or migrate an older file to it, in one write transaction (so that two
    processes opening one new directory never both migrate). `fold`: how text is folded for
    `text_parts`, filled here from `text_index` when an older file lacks it."""
    with transaction(conn, write=True):
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, SCHEMA_VERSION, *_MIGRATES_FROM):
            raise RuntimeError(f"store schema version {version}, this code reads {SCHEMA_VERSION}")
        for statement in _SCHEMA.split(";\n"):
            conn.execute(statement)
        for table, column, declaration in _ADDED_COLUMNS:
            present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
            if column not in present:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
        for statement in _INDEXES.split(";\n"):
            conn.execute(statement)
        if version in _MIGRATES_FROM:
            rows = conn.execute("SELECT rowid, ocr, labels, objects FROM text_index").fetchall()
            conn.executemany(
                "INSERT INTO text_parts (rowid, ocr, labels, objects) VALUES (?, ?, ?, ?)",
                [(rowid, *map(fold, texts)) for rowid, *texts in rows],
            )
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


@contextmanager
def transaction(conn: sqlite3.Connection, write: bool = False) -> Iterator[sqlite3.Connection]:
    """BEGIN, then COMMIT when the block ends, or ROLLBACK when it raises (anything, so that a
    cancelled call never leaves the connection inside a transaction).

    A write transaction is BEGIN IMMEDIATE: it takes the write lock at once, so a busy store is
    waited for (busy_timeout) before anything is read, not refused half-way. A read transaction
    gives every statement in it one snapshot.
    """
    conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:  # SQLite may have rolled back already (e.g. SQLITE_FULL)
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
