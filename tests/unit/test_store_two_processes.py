"""Two processes on one embedded store directory, as N server processes on one port run it
(a contract test of the embedded store alone; it lives with the unit tests because importing
usearch before onnxruntime crashes this environment, and tests/integration imports the latter).

What one process writes, the other finds by k-NN, text, get and count; what one deletes or
replaces is gone from the other; filtered k-NN stays equal to the exact answer in both; and
only the process holding the directory's lock writes the HNSW cache files.
"""

from __future__ import annotations

import asyncio
import dataclasses
import multiprocessing
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from server.store import Filters, ImageRecord, IndexKind, Space, TextHit, VectorHit
from server.store.embedded import EmbeddedOptions, EmbeddedStore
from server.store.embedded.hnsw import HnswParams
from tests.contract.store_data import clustered, exact_top, record

DIMS = {Space.IMAGES: 32, Space.FACES: 16}
N = 1_200
IDS = [f"img-{i:04d}" for i in range(N)]


def options() -> EmbeddedOptions:
    # Tenants past 50 vectors go through the graph (unfiltered and broad filters), a filter
    # matching 30 is answered exactly; a search list of 400 over 1 200 vectors makes the
    # graph's answer the exact one, so answers can be compared exactly across processes.
    return EmbeddedOptions(dims=DIMS, exact_threshold=50, hnsw=HnswParams(expansion_search=400))


def rare(i: int) -> bool:
    return i % 40 == 3  # 30 records


def build(rng: np.random.Generator) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    images = clustered(rng, N + 5, DIMS[Space.IMAGES], clusters=12)
    faces = clustered(rng, N, DIMS[Space.FACES], clusters=12)
    return images, faces


def make(i: int, images: npt.NDArray[np.float32], faces: npt.NDArray[np.float32]) -> ImageRecord:
    return record(
        "acme",
        IDS[i],
        images[i],
        faces=[faces[i]] if i % 10 == 0 else [],
        labels=("rare",) if rare(i) else ("common",),
        ocr=(f"receipt number n{i}",),
        metadata={"half": str(i % 2)},
    )


def wire(found: ImageRecord) -> dict[str, object]:
    """A record as pickle can carry it (its metadata is a read-only mapping proxy)."""
    state = {f.name: getattr(found, f.name) for f in dataclasses.fields(found)}
    state["metadata"] = dict(found.metadata)
    return state


async def run(store: EmbeddedStore, name: str, args: tuple[Any, ...]) -> object:
    if name == "upsert_many":
        await store.upsert_many([ImageRecord(**state) for state in args[0]])
        return None
    if name == "get":
        found = await store.get(*args)
        return None if found is None else wire(found)
    if name == "caches":
        return cache_state(store)
    return await getattr(store, name)(*args)


def cache_state(store: EmbeddedStore) -> dict[Space, tuple[int, dict[str, int]]]:
    """What each HNSW cache holds: its size and its per-tenant counts."""
    return {space: (cache.size, dict(cache.counts)) for space, cache in store.caches.items()}


def serve(path: str, conn: Connection) -> None:
    """The other process: open the store, then run each (method, args) it is sent."""
    asyncio.run(serve_calls(path, conn))


async def serve_calls(path: str, conn: Connection) -> None:
    store = await EmbeddedStore.open(path, options())
    conn.send(("ok", store.holds_lock))
    try:
        while (call := await asyncio.to_thread(conn.recv)) is not None:
            name, args = call
            try:
                conn.send(("ok", await run(store, name, args)))
            except Exception as exc:  # sent back so the test fails with the cause
                conn.send(("error", repr(exc)))
    finally:
        await store.close()
        conn.send(("ok", "closed"))


class Other:
    """The store in the child process, called like the local one."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    async def reply(self) -> Any:
        status, result = await asyncio.to_thread(self.conn.recv)
        assert status == "ok", result
        return result

    async def call(self, name: str, *args: object) -> Any:
        await asyncio.to_thread(self.conn.send, (name, args))
        return await self.reply()

    async def upsert_many(self, batch: list[ImageRecord]) -> None:
        await self.call("upsert_many", [wire(r) for r in batch])

    async def get(self, tenant: str, image_id: str) -> ImageRecord | None:
        state = await self.call("get", tenant, image_id)
        return None if state is None else ImageRecord(**state)

    async def knn(self, *args: object) -> tuple[VectorHit, ...]:
        hits: tuple[VectorHit, ...] = await self.call("knn", *args)
        return hits


async def test_two_processes_share_one_store_directory(tmp_path: Path) -> None:
    rng = np.random.default_rng(21)
    images, faces = build(rng)
    queries = images[N:]
    mine = await EmbeddedStore.open(tmp_path, options())
    context = multiprocessing.get_context("spawn")
    parent_end, child_end = context.Pipe()
    child = context.Process(target=serve, args=(str(tmp_path), child_end))
    child.start()
    other = Other(parent_end)
    try:
        assert mine.holds_lock
        assert await other.reply() is False  # the child does not hold the lock

        # Each process writes half of the records.
        for lo in range(0, N // 2, 200):
            await other.upsert_many([make(i, images, faces) for i in range(lo, lo + 200)])
        await mine.upsert_many([make(i, images, faces) for i in range(N // 2, N)])
        live = set(range(N))
        await check_both(mine, other, images, faces, queries, live)

        # Each deletes records the other wrote (and some of its own); one replaces a record
        # the other wrote with a new vector.
        for i in range(0, N, 13):
            store = mine if i % 2 else other
            deleted = await (mine.delete("acme", IDS[i]) if store is mine
                             else other.call("delete", "acme", IDS[i]))  # fmt: skip
            assert deleted is True
            live.discard(i)
        images[1] = queries[0]
        await mine.upsert(make(1, images, faces))
        await check_both(mine, other, images, faces, queries, live)
        assert (await other.knn("acme", Space.IMAGES, queries[0], 1))[0].image_id == IDS[1]

        # Neither process has saved yet (save_every is far off); the child's close does not
        # write the files, the lock holder's does.
        cache_files = [tmp_path / f"hnsw-{space.value}.usearch" for space in Space]
        await asyncio.to_thread(parent_end.send, None)
        assert await other.reply() == "closed"
        assert not any(path.exists() for path in cache_files)
    finally:
        child.join(timeout=30)
        if child.is_alive():
            child.kill()
            child.join()
        await mine.close()
    assert child.exitcode == 0
    assert all(path.exists() for path in cache_files)


async def check_both(
    mine: EmbeddedStore,
    other: Other,
    images: npt.NDArray[np.float32],
    faces: npt.NDArray[np.float32],
    queries: npt.NDArray[np.float32],
    live: set[int],
) -> None:
    """Every answer in either process equals the exact one over the live records."""
    rows = sorted(live)
    rare_rows = [i for i in rows if rare(i)]
    odd_rows = [i for i in rows if i % 2]
    face_rows = [i for i in rows if i % 10 == 0]
    cases = [
        (Filters(), rows),
        (Filters(labels=frozenset({"rare"})), rare_rows),  # the exact path
        (Filters(metadata={"half": "1"}), odd_rows),  # the graph, over-fetched
    ]
    for query in queries:
        for filters, expected_rows in cases:
            expected = exact_top(images[expected_rows], [IDS[i] for i in expected_rows], query, 10)
            for hits in (
                await mine.knn("acme", Space.IMAGES, query, 10, filters),
                await other.knn("acme", Space.IMAGES, query, 10, filters),
            ):
                assert [h.image_id for h in hits] == expected
    face_query = faces[face_rows[-1]]
    expected = exact_top(faces[face_rows], [IDS[i] for i in face_rows], face_query, 5)
    for hits in (
        await mine.knn("acme", Space.FACES, face_query, 5),
        await other.knn("acme", Space.FACES, face_query, 5),
    ):
        assert [(h.image_id, h.face_index) for h in hits] == [(i, 0) for i in expected]
    for store_count in (mine.count, lambda *a: other.call("count", *a)):
        assert await store_count("acme", IndexKind.IMAGES) == len(rows)
        assert await store_count("acme", IndexKind.FACES) == len(face_rows)
    # The queries above brought both processes' caches up to date: deletions included, since
    # a stale key would only be filtered out by SQLite, never seen in the answers.
    expected_caches = {
        Space.IMAGES: (len(rows), {"acme": len(rows)}),
        Space.FACES: (len(face_rows), {"acme": len(face_rows)}),
    }
    assert cache_state(mine) == expected_caches
    assert await other.call("caches") == expected_caches
    for i in (0, 1, 13, 14, N // 2, N - 1):
        wanted = make(i, images, faces) if i in live else None
        assert await mine.get("acme", IDS[i]) == wanted
        assert await other.get("acme", IDS[i]) == wanted
        mine_text = await mine.search_text("acme", f"n{i}", 5)
        other_text: tuple[TextHit, ...] = await other.call("search_text", "acme", f"n{i}", 5)
        expected_ids = [IDS[i]] if i in live else []
        # Whole-word hits (score > 0): "n13" also matches inside "n133", after them.
        assert [h.image_id for h in mine_text if h.score > 0] == expected_ids
        assert [h.image_id for h in other_text if h.score > 0] == expected_ids
