"""The contract every vector store backend keeps, run against each backend.

The embedded store runs always; OpenSearch runs when OPENSEARCH_URL names a cluster (for
example docker-compose's, http://127.0.0.1:4607), each test in its own index prefix (the `store`
fixture, conftest.py).
"""

from __future__ import annotations

import numpy as np
import pytest

from server.domain import Box, InvalidArgumentError
from server.store import (
    Filters,
    ImageRecord,
    IndexKind,
    MatchKind,
    MetadataRange,
    Space,
    Vector,
    VectorStore,
)
from tests.contract.store_data import clustered, exact_top, record

IMAGE_DIM = 1280
FACE_DIM = 128


def unit(rng: np.random.Generator, dim: int) -> Vector:
    v = rng.standard_normal(dim)
    return (v / np.linalg.norm(v)).astype(np.float32)


def full_record(rng: np.random.Generator, tenant: str, image_id: str, **kw: object) -> ImageRecord:
    return record(
        tenant,
        image_id,
        unit(rng, IMAGE_DIM),
        faces=[unit(rng, FACE_DIM) for _ in range(3)],
        labels=("golden retriever", "dog"),
        objects=("dog", "frisbee"),
        ocr=("Fetch the frisbee", "Park rules apply"),
        metadata={"camera": "x100", "year": "2021"},
        **kw,  # type: ignore[arg-type]
    )


async def test_upsert_get_delete_round_trip(store: VectorStore) -> None:
    rng = np.random.default_rng(1)
    original = full_record(rng, "acme", "img-1")
    await store.upsert(original)

    got = await store.get("acme", "img-1")
    assert got == original
    assert got is not None and got.embedding is not None and original.embedding is not None
    assert got.embedding.tobytes() == original.embedding.tobytes()
    assert got.created_at == original.created_at
    assert await store.get("acme", "img-2") is None

    assert await store.delete("acme", "img-1") is True
    assert await store.get("acme", "img-1") is None
    assert await store.delete("acme", "img-1") is False
    assert [await store.count("acme", kind) for kind in IndexKind] == [0, 0, 0, 0]


async def test_reupsert_replaces_every_sub_record(store: VectorStore) -> None:
    rng = np.random.default_rng(2)
    first = full_record(rng, "acme", "img-1")
    await store.upsert(first)
    await store.upsert(first)  # idempotent: the same record twice is one record
    assert [await store.count("acme", kind) for kind in IndexKind] == [1, 3, 2, 2]

    second = record(
        "acme",
        "img-1",
        unit(rng, IMAGE_DIM),
        faces=[unit(rng, FACE_DIM)],
        labels=("tabby cat",),
        ocr=("Welcome home",),
        metadata={"camera": "z9"},
    )
    await store.upsert(second)
    assert await store.get("acme", "img-1") == second
    assert [await store.count("acme", kind) for kind in IndexKind] == [1, 1, 0, 1]

    face_hits = await store.knn("acme", Space.FACES, first.faces[0].embedding, k=10)
    assert [(h.image_id, h.face_index) for h in face_hits] == [("img-1", 0)]
    assert face_hits[0].score == pytest.approx(
        float(np.dot(first.faces[0].embedding, second.faces[0].embedding)), abs=1e-3
    )
    assert await store.search_text("acme", "frisbee", k=10) == ()
    assert second.embedding is not None
    old_label = Filters(labels=frozenset({"dog"}))
    assert await store.knn("acme", Space.IMAGES, second.embedding, 5, old_label) == ()
    assert len(await store.search_text("acme", "welcome", k=10)) == 1


async def test_batch_upsert_stores_each_record_whole(store: VectorStore) -> None:
    rng = np.random.default_rng(3)
    batch = [full_record(rng, "acme", f"img-{i}") for i in range(5)]
    await store.upsert_many(batch)
    assert [await store.get("acme", f"img-{i}") for i in range(5)] == batch
    assert await store.count("acme", IndexKind.FACES) == 15
    with pytest.raises(InvalidArgumentError):
        await store.upsert_many([batch[0], batch[0]])


async def test_tenants_never_see_each_other(store: VectorStore) -> None:
    rng = np.random.default_rng(4)
    mine = full_record(rng, "acme", "shared-id")
    theirs = record("globex", "shared-id", unit(rng, IMAGE_DIM), faces=[unit(rng, FACE_DIM)],
                    labels=("dog",), ocr=("frisbee club",))  # fmt: skip
    await store.upsert_many([mine, theirs])

    assert await store.get("acme", "shared-id") == mine
    assert await store.get("globex", "shared-id") == theirs
    # The other tenant's exact vector finds only this tenant's records.
    assert theirs.embedding is not None
    hits = await store.knn("acme", Space.IMAGES, theirs.embedding, k=10)
    assert [h.image_id for h in hits] == ["shared-id"]
    assert hits[0].score < 0.5
    face_hits = await store.knn("acme", Space.FACES, theirs.faces[0].embedding, k=10)
    assert len(face_hits) == 3 and all(h.score < 0.9 for h in face_hits)
    assert [h.image_id for h in await store.search_text("nobody", "frisbee", k=10)] == []
    assert await store.count("nobody", IndexKind.IMAGES) == 0

    assert await store.delete("globex", "shared-id") is True
    assert await store.get("acme", "shared-id") == mine
    assert await store.delete("globex", "shared-id") is False
    assert await store.count("acme", IndexKind.FACES) == 3


async def test_knn_order_is_exact_cosine_order(store: VectorStore) -> None:
    rng = np.random.default_rng(5)
    drawn = clustered(rng, 305, IMAGE_DIM, clusters=10)
    vectors, queries = drawn[:300], drawn[300:]
    ids = [f"img-{i:03d}" for i in range(300)]
    await store.upsert_many([record("acme", i, v) for i, v in zip(ids, vectors, strict=True)])
    for query in queries:
        hits = await store.knn("acme", Space.IMAGES, query, k=10)
        assert [h.image_id for h in hits] == exact_top(vectors, ids, query, 10)
        expected = [
            float(np.dot(vectors[ids.index(h.image_id)], query))
            / float(np.linalg.norm(vectors[ids.index(h.image_id)]) * np.linalg.norm(query))
            for h in hits
        ]
        assert [h.score for h in hits] == pytest.approx(expected, abs=1e-3)
        assert all(h.space is Space.IMAGES and h.face_index is None for h in hits)


async def test_face_hits_name_the_face_and_its_box(store: VectorStore) -> None:
    rng = np.random.default_rng(6)
    target = full_record(rng, "acme", "group-photo")
    await store.upsert_many([target, full_record(rng, "acme", "other")])
    hits = await store.knn("acme", Space.FACES, target.faces[2].embedding, k=1)
    assert [(h.image_id, h.face_index, h.box) for h in hits] == [
        ("group-photo", 2, Box(10.0, 5.0, 50.0, 60.0))
    ]
    assert hits[0].score == pytest.approx(1.0, abs=1e-3)


async def test_filters_labels_metadata_ranges_and_indexes(store: VectorStore) -> None:
    rng = np.random.default_rng(7)
    query = unit(rng, IMAGE_DIM)
    rows = [
        ("a", ("dog",), {"camera": "x100", "year": "2019", "city": "Berlin"}),
        ("b", ("cat",), {"camera": "x100", "year": "2021", "city": "Paris"}),
        ("c", ("dog", "cat"), {"camera": "z9", "year": "2023", "city": "Oslo"}),
        ("d", ("bird",), {"camera": "z9", "year": "n/a", "city": "Athens"}),
    ]
    await store.upsert_many(
        [
            record(
                "acme",
                i,
                (query + 0.01 * unit(rng, IMAGE_DIM)).astype(np.float32),
                labels=labels,
                metadata=meta,
                ocr=(f"label {i}",),
            )  # fmt: skip
            for i, labels, meta in rows
        ]
    )

    async def ids(filters: Filters) -> list[str]:
        return sorted(h.image_id for h in await store.knn("acme", Space.IMAGES, query, 10, filters))

    assert await ids(Filters(labels=frozenset({"cat"}))) == ["b", "c"]
    assert await ids(Filters(labels=frozenset({"bird", "dog"}))) == ["a", "c", "d"]
    assert await ids(Filters(metadata={"camera": "z9"})) == ["c", "d"]
    assert await ids(Filters(metadata={"camera": "z9", "city": "Oslo"})) == ["c"]
    assert await ids(Filters(ranges=(MetadataRange("year", gte=2020),))) == ["b", "c"]
    assert await ids(Filters(ranges=(MetadataRange("year", gte=2019, lte=2021.5),))) == ["a", "b"]
    assert await ids(Filters(ranges=(MetadataRange("city", gte="B", lte="P"),))) == ["a", "c"]
    assert await ids(Filters(labels=frozenset({"dog"}), metadata={"camera": "x100"})) == ["a"]
    assert await ids(Filters(indexes=frozenset({IndexKind.IMAGES}))) == ["a", "b", "c", "d"]
    assert await ids(Filters(indexes=frozenset({IndexKind.FACES, IndexKind.OCR}))) == []
    assert await ids(Filters(labels=frozenset({"unicorn"}))) == []

    text = await store.search_text("acme", "label dog", 10)
    assert sorted(h.image_id for h in text) == ["a", "b", "c", "d"]
    only_ocr = Filters(indexes=frozenset({IndexKind.OCR}))
    dog_in_ocr = await store.search_text("acme", "dog", 10, only_ocr)
    assert dog_in_ocr == ()
    labels_only = Filters(indexes=frozenset({IndexKind.IMAGES}), metadata={"camera": "z9"})
    hits = await store.search_text("acme", "dog", 10, labels_only)
    assert [(h.image_id, [(m.kind, m.index, m.text) for m in h.matches]) for h in hits] == [
        ("c", [(MatchKind.LABEL, 0, "dog")])
    ]


async def test_text_search_ranks_by_bm25_and_says_what_matched(store: VectorStore) -> None:
    await store.upsert_many(
        [
            record("acme", "receipt", None,
                   ocr=("INVOICE 2041", "invoice total 12.50", "Thank you"),
                   labels=("receipt",)),
            record("acme", "letter", None,
                   ocr=("Dear customer, your invoice is attached to this long letter about",
                        "many other things that are not about billing at all"),
                   labels=("envelope",)),
            record("acme", "menu", None, ocr=("Café du Monde", "Croissant 2.10"),
                   objects=("cup",)),
        ]
    )  # fmt: skip
    hits = await store.search_text("acme", "Invoice", 10)
    assert [h.image_id for h in hits] == ["receipt", "letter"]
    assert hits[0].score > hits[1].score > 0
    assert [(m.kind, m.index, m.text) for m in hits[0].matches] == [
        (MatchKind.OCR_LINE, 0, "INVOICE 2041"),
        (MatchKind.OCR_LINE, 1, "invoice total 12.50"),
    ]
    assert hits[0].matches[1].box == Box(0.0, 30.0, 300.0, 55.0)

    cafe = await store.search_text("acme", "cafe cup", 10)
    assert [(h.image_id, [(m.kind, m.text) for m in h.matches]) for h in cafe] == [
        ("menu", [(MatchKind.OCR_LINE, "Café du Monde"), (MatchKind.OBJECT, "cup")])
    ]
    assert await store.search_text("acme", "   ", 10) == ()


async def test_pages_by_offset_are_stable_with_ties(store: VectorStore) -> None:
    rng = np.random.default_rng(8)
    same = unit(rng, IMAGE_DIM)
    # Equal vectors and equal texts: every score ties, so order is by image id alone (and more
    # records tie than a page's shortlist holds).
    ids = [f"img-{i:02d}" for i in rng.permutation(60)]
    await store.upsert_many([record("acme", i, same, ocr=("same words here",)) for i in ids])
    everything = [h.image_id for h in await store.knn("acme", Space.IMAGES, same, k=60)]
    assert everything == sorted(ids)
    pages = [
        h.image_id
        for offset in range(0, 60, 7)
        for h in await store.knn("acme", Space.IMAGES, same, k=7, offset=offset)
    ]
    assert pages == everything
    text_pages = [
        h.image_id
        for offset in range(0, 60, 7)
        for h in await store.search_text("acme", "words", k=7, offset=offset)
    ]
    assert text_pages == sorted(ids)


async def test_bad_arguments_are_rejected_with_the_field(store: VectorStore) -> None:
    rng = np.random.default_rng(9)
    with pytest.raises(InvalidArgumentError) as err:
        await store.upsert(record("acme", "x", unit(rng, 64)))
    assert err.value.violations[0].path == "embedding"
    with pytest.raises(InvalidArgumentError) as err:
        await store.upsert(record("acme", "x" * 257, None))
    assert err.value.violations[0].path == "image_id"
    with pytest.raises(InvalidArgumentError) as err:
        await store.knn("acme", Space.IMAGES, np.zeros(IMAGE_DIM, np.float32), 5)
    assert err.value.violations[0].path == "vector"
    with pytest.raises(InvalidArgumentError) as err:
        await store.knn("acme", Space.IMAGES, unit(rng, IMAGE_DIM), 0)
    assert err.value.violations[0].path == "k"
    bad_range = Filters(ranges=(MetadataRange("year", gte=1, lte="9"),))
    with pytest.raises(InvalidArgumentError) as err:
        await store.search_text("acme", "x", 5, bad_range)
    assert err.value.violations[0].path == "filters.ranges[0]"
