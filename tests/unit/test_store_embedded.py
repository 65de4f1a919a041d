"""The embedded store's own promises: selective filters still give k exact hits, acknowledged
writes survive kill -9, and the HNSW cache is rebuilt or caught up from SQLite at open."""

from __future__ import annotations

import asyncio
import shutil
import signal
import sys
from pathlib import Path

import numpy as np
import pytest

from server.store import (
    Filters,
    ImageRecord,
    IndexKind,
    MetadataRange,
    Space,
    StoreUnavailableError,
)
from server.store.embedded import EmbeddedOptions, EmbeddedStore
from server.store.embedded.hnsw import HnswParams
from tests.contract.store_data import clustered, exact_top, record

ROOT = Path(__file__).resolve().parents[2]
# Small dimensions keep the 10 000-record graphs quick to build; the paths under test do not
# depend on the dimension.
DIMS = {Space.IMAGES: 64, Space.FACES: 16}


def small_options(**overrides: int) -> EmbeddedOptions:
    return EmbeddedOptions(dims=DIMS, **overrides)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def ten_thousand() -> tuple[np.ndarray, list[str], np.ndarray]:
    """10 000 vectors, their ids, and 5 queries drawn from the same clusters."""
    rng = np.random.default_rng(11)
    drawn = clustered(rng, 10_005, DIMS[Space.IMAGES], clusters=40)
    return drawn[:10_000], [f"img-{i:05d}" for i in range(10_000)], drawn[10_000:]


FIRST_EVENS = (0, 2, 4, 6, 8)


def rare(i: int) -> bool:
    return i % 100 == 37  # 1 % of the records


def common(i: int) -> bool:
    return i % 10 < 3  # 30 %


async def fill(store: EmbeddedStore, vectors: np.ndarray, ids: list[str]) -> None:
    batch: list[ImageRecord] = []
    for i, (image_id, vector) in enumerate(zip(ids, vectors, strict=True)):
        labels: tuple[str, ...] = ("rare",) if rare(i) else ()
        # "odd" and half=0 each select half the records, together only the first five evens.
        if i % 2 or i in FIRST_EVENS:
            labels += ("odd",)
        meta = {"group": "common" if common(i) else "other", "n": str(i), "half": str(i % 2)}
        batch.append(record("acme", image_id, vector, labels=labels, metadata=meta))
        if len(batch) == 1000:
            await store.upsert_many(batch)
            batch = []
    await store.upsert_many(batch)


async def test_selective_and_broad_filters_both_return_k_matching_hits(
    tmp_path: Path, ten_thousand: tuple[np.ndarray, list[str], np.ndarray]
) -> None:
    vectors, ids, queries = ten_thousand
    store = await EmbeddedStore.open(tmp_path, small_options())
    try:
        await fill(store, vectors, ids)
        rare_rows = [i for i in range(len(ids)) if rare(i)]
        common_rows = [i for i in range(len(ids)) if common(i)]
        overlap = 0
        for query in queries:
            # 1 % match: answered exactly, so equal to the exact answer.
            hits = await store.knn(
                "acme", Space.IMAGES, query, 10, Filters(labels=frozenset({"rare"}))
            )
            expected = exact_top(vectors[rare_rows], [ids[i] for i in rare_rows], query, 10)
            assert [h.image_id for h in hits] == expected
            # The same 1 % as a numeric range over metadata.
            by_range = await store.knn(
                "acme", Space.IMAGES, query, 10,
                Filters(ranges=(MetadataRange("n", gte=0, lte=99),)),
            )  # fmt: skip
            assert [h.image_id for h in by_range] == exact_top(vectors[:100], ids[:100], query, 10)
            # 30 % match: HNSW over-fetch, re-checked; every hit matches, k of them.
            broad = await store.knn(
                "acme", Space.IMAGES, query, 10, Filters(metadata={"group": "common"})
            )
            assert len(broad) == 10
            assert all(common(ids.index(h.image_id)) for h in broad)
            exact = exact_top(vectors[common_rows], [ids[i] for i in common_rows], query, 10)
            overlap += len({h.image_id for h in broad} & set(exact))
            # Two broad conditions with a 5-record intersection: HNSW comes up short, the exact
            # fallback finds all five (fewer than k exist).
            narrow = Filters(labels=frozenset({"odd"}), metadata={"half": "0"})
            few = await store.knn("acme", Space.IMAGES, query, 10, narrow)
            evens = list(FIRST_EVENS)
            assert [h.image_id for h in few] == exact_top(
                vectors[evens], [ids[i] for i in evens], query, 10
            )
        assert overlap / (10 * len(queries)) >= 0.9  # recall@10 of the approximate path
    finally:
        await store.close()


_WRITER = """
import asyncio, sys
import numpy as np
from server.store import Space
from server.store.embedded import EmbeddedOptions, EmbeddedStore
from server.store.embedded.hnsw import HnswParams
from tests.unit.test_store_embedded import DIMS, durable_record

async def main() -> None:
    # Saves the HNSW cache every 25 vector changes, so the kill leaves a stale one behind.
    store = await EmbeddedStore.open(sys.argv[1], EmbeddedOptions(dims=DIMS, save_every=25))
    for i in range(100_000):
        await store.upsert(durable_record(i))
        print(i, flush=True)

asyncio.run(main())
"""


def durable_record(i: int) -> ImageRecord:
    """Record number i, reproducible in the test process for comparison."""
    rng = np.random.default_rng(i)
    return record(
        "acme",
        f"img-{i}",
        rng.standard_normal(DIMS[Space.IMAGES]).astype(np.float32),
        faces=[rng.standard_normal(DIMS[Space.FACES]).astype(np.float32) for _ in range(i % 3)],
        labels=("dog",),
        objects=("dog",) * (i % 4),
        ocr=(f"line {i}",),
        metadata={"n": str(i)},
        offset_s=i,
    )


async def test_every_acknowledged_upsert_survives_kill_9(tmp_path: Path) -> None:
    writer = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _WRITER, str(tmp_path), cwd=ROOT, stdout=asyncio.subprocess.PIPE
    )
    assert writer.stdout is not None
    acknowledged: list[int] = []
    try:
        while len(acknowledged) < 60:
            line = await writer.stdout.readline()
            assert line, "the writer exited before it was killed"
            acknowledged.append(int(line))
    finally:
        writer.send_signal(signal.SIGKILL)
        await writer.wait()
    assert writer.returncode == -signal.SIGKILL

    # The child saved its image cache every 25 vectors, so rows newer than it almost always
    # exist (unless the kill fell right after a save). Queries go through the graph (exact
    # threshold 5) to show that the cache read from disk now holds every stored vector.
    store = await EmbeddedStore.open(tmp_path, small_options(exact_threshold=5))
    try:
        assert store.caches[Space.IMAGES].opened_as in ("caught_up", "loaded")
        for i in acknowledged:
            assert await store.get("acme", f"img-{i}") == durable_record(i)
        # Whatever else made it in (written before the kill landed) is whole, never partial.
        stored = await store.count("acme", IndexKind.IMAGES)
        assert stored >= len(acknowledged)
        for i in range(stored):
            expected = durable_record(i)
            assert await store.get("acme", f"img-{i}") == expected
            assert expected.embedding is not None
            hits = await store.knn("acme", Space.IMAGES, expected.embedding, 1)
            assert [h.image_id for h in hits] == [f"img-{i}"]
    finally:
        await store.close()


async def answers(store: EmbeddedStore, queries: np.ndarray) -> list[list[tuple[str, float]]]:
    return [
        [(h.image_id, h.score) for h in await store.knn("acme", Space.IMAGES, q, 10)]
        for q in queries
    ]


async def test_hnsw_cache_is_rebuilt_or_caught_up_with_identical_answers(tmp_path: Path) -> None:
    rng = np.random.default_rng(13)
    drawn = clustered(rng, 1_208, DIMS[Space.IMAGES], clusters=20)
    vectors, queries = drawn[:1_200], drawn[1_200:]
    ids = [f"img-{i:04d}" for i in range(1_200)]
    # A tiny exact threshold makes every query go through the graph, and a wide search makes
    # the graph's answer the exact one whatever order it was built in, so the answers compare
    # the caches' contents, not two graphs' approximation errors.
    options = EmbeddedOptions(dims=DIMS, exact_threshold=5, hnsw=HnswParams(expansion_search=400))
    cache_file = tmp_path / "hnsw-images.usearch"

    store = await EmbeddedStore.open(tmp_path, options)
    await store.upsert_many(
        [record("acme", i, v) for i, v in zip(ids[:1000], vectors[:1000], strict=True)]
    )
    await store.close()
    saved = tmp_path / "saved.usearch"
    shutil.copy(cache_file, saved)

    store = await EmbeddedStore.open(tmp_path, options)
    assert store.caches[Space.IMAGES].opened_as == "loaded"
    await store.upsert_many(
        [record("acme", i, v) for i, v in zip(ids[1000:], vectors[1000:], strict=True)]
    )
    for image_id in ids[:100]:
        await store.delete("acme", image_id)
    live_vectors, live_ids = vectors[100:], ids[100:]
    before = await answers(store, queries)
    await store.close()
    for query, got in zip(queries, before, strict=True):
        assert [i for i, _ in got] == exact_top(live_vectors, live_ids, query, 10)

    # Stale: the older file covers 1000 rows, 100 of them since deleted, 200 newer missing.
    shutil.copy(saved, cache_file)
    store = await EmbeddedStore.open(tmp_path, options)
    assert store.caches[Space.IMAGES].opened_as == "caught_up"
    assert store.caches[Space.IMAGES].size == 1_100
    assert await answers(store, queries) == before
    await store.close()

    cache_file.unlink()
    store = await EmbeddedStore.open(tmp_path, options)
    assert store.caches[Space.IMAGES].opened_as == "rebuilt"
    assert await answers(store, queries) == before
    await store.close()

    cache_file.write_bytes(cache_file.read_bytes()[:5000])  # torn or damaged file
    store = await EmbeddedStore.open(tmp_path, options)
    assert store.caches[Space.IMAGES].opened_as == "rebuilt"
    assert await answers(store, queries) == before
    await store.close()


async def test_only_the_lock_holder_writes_the_cache_files(tmp_path: Path) -> None:
    cache_file = tmp_path / "hnsw-images.usearch"
    first = await EmbeddedStore.open(tmp_path, small_options())
    second = await EmbeddedStore.open(tmp_path, small_options())
    try:
        assert first.holds_lock and not second.holds_lock
        await second.upsert(durable_record(1))
        await second.save_caches()
        assert not cache_file.exists()
        await first.save_caches()
        assert cache_file.exists()
        await first.close()
        # The lock is free now: the second store takes it at its next save.
        await second.upsert(durable_record(2))
    finally:
        await first.close()
        await second.close()
    assert second.holds_lock is False  # released at close
    reopened = await EmbeddedStore.open(tmp_path, small_options())
    try:
        assert reopened.caches[Space.IMAGES].opened_as == "loaded"
        assert reopened.caches[Space.IMAGES].size == 2
    finally:
        await reopened.close()
    with pytest.raises(StoreUnavailableError):
        await reopened.get("acme", "x")


async def test_concurrent_readers_see_whole_records_while_a_writer_replaces_them(
    tmp_path: Path,
) -> None:
    store = await EmbeddedStore.open(tmp_path, small_options())
    try:
        versions = [durable_record(i) for i in range(6)]
        shared = [
            record(
                "acme",
                "same",
                v.embedding,
                faces=[f.embedding for f in v.faces],
                objects=("dog",) * (i % 4),
                metadata={"n": str(i)},
            )  # fmt: skip
            for i, v in enumerate(versions)
        ]

        # Stored before the readers start, so a reader that finds no record saw a replacement
        # half done; the readers go on until the writer is done, however the tasks interleave.
        await store.upsert(shared[-1])
        writing = True

        async def write() -> None:
            nonlocal writing
            for _ in range(5):
                for r in shared:
                    await store.upsert(r)
            writing = False

        async def read() -> None:
            reads = 0
            while writing or reads == 0:
                assert await store.get("acme", "same") in shared
                reads += 1

        await asyncio.gather(write(), read(), read())
        assert await store.count("acme", IndexKind.FACES) == len(shared[-1].faces)
    finally:
        await store.close()


async def test_a_small_tenant_in_a_big_graph_gets_its_exact_neighbours(tmp_path: Path) -> None:
    rng = np.random.default_rng(14)
    drawn = clustered(rng, 2_165, DIMS[Space.IMAGES], clusters=10)
    big, small, queries = drawn[:2_000], drawn[2_000:2_160], drawn[2_160:]
    small_ids = [f"s-{i:03d}" for i in range(160)]
    # Both tenants are past the exact threshold, so the graph is searched: for "small" (7 % of
    # the graph) with widening over-fetch at max_fetch 4096, straight to exact at 400.
    for max_fetch in (4_096, 400):
        store = await EmbeddedStore.open(
            tmp_path / str(max_fetch), small_options(exact_threshold=50, max_fetch=max_fetch)
        )
        try:
            await store.upsert_many([record("big", f"b-{i}", v) for i, v in enumerate(big)])
            await store.upsert_many(
                [record("small", i, v) for i, v in zip(small_ids, small, strict=True)]
            )
            for query in queries:
                hits = await store.knn("small", Space.IMAGES, query, 10)
                assert [h.image_id for h in hits] == exact_top(small, small_ids, query, 10)
        finally:
            await store.close()


async def test_exact_answers_hold_where_the_cache_cannot_tell_vectors_apart(
    tmp_path: Path,
) -> None:
    """The exact path first judges candidates on the cache's f16 vectors. 300 near-duplicates
    whose cosines differ by less than f16 can resolve, at magnitudes from 1e-30 to 1e30, still
    come back in exact order (scores rounded to 6 places, ties by id), and the cache's
    similarities stay within the error it states."""
    rng = np.random.default_rng(15)
    dim = DIMS[Space.IMAGES]
    base = rng.standard_normal(dim).astype(np.float32)
    near = base + rng.standard_normal((300, dim)).astype(np.float32) * 3e-5
    far = clustered(rng, 1_200, dim, clusters=10)
    scales = 10.0 ** rng.integers(-30, 31, 1_500)
    vectors = (np.concatenate([near, far]) * scales[:, None]).astype(np.float32)
    ids = [f"v-{i:04d}" for i in range(len(vectors))]
    store = await EmbeddedStore.open(tmp_path, small_options())
    try:
        await store.upsert_many(
            [record("acme", i, v, labels=("near",) if n < 300 else ("far",))
             for n, (i, v) in enumerate(zip(ids, vectors, strict=True))]
        )  # fmt: skip
        cache = store.caches[Space.IMAGES]
        error = cache.cosine_error
        assert error is not None
        for query in (base, near[7] * 1e20, far[0]):
            exact = cosines(vectors, query)
            # 1 500 vectors, under the exact threshold: every row is a candidate.
            hits = await store.knn("acme", Space.IMAGES, query, 20)
            assert [h.image_id for h in hits] == rounded_top(exact, ids, 20)
            near_only = Filters(labels=frozenset({"near"}))
            hits = await store.knn("acme", Space.IMAGES, query, 20, near_only)
            assert [h.image_id for h in hits] == rounded_top(exact[:300], ids[:300], 20)
            present, similarity = cache.similarities(query, list(range(1, len(ids) + 1)))
            assert present.size == len(ids)
            assert float(np.abs(similarity - exact[present]).max()) <= error
        # The near-duplicates really are closer together than the cache's error.
        spread = cosines(vectors[:300], base)
        assert float(spread.max() - np.sort(spread)[-20]) < error
    finally:
        await store.close()


def cosines(matrix: np.ndarray, query: np.ndarray) -> np.ndarray:
    wide = matrix.astype(np.float64)
    q = query.astype(np.float64)
    scores: np.ndarray = (wide @ q) / (np.linalg.norm(wide, axis=1) * np.linalg.norm(q))
    return scores


def rounded_top(scores: np.ndarray, ids: list[str], k: int) -> list[str]:
    """The store's order: cosine rounded to 6 places, highest first, ties by id."""
    rounded = np.round(scores, 6).tolist()
    order = sorted(range(len(ids)), key=lambda j: (-rounded[j], ids[j]))
    return [ids[j] for j in order[:k]]
