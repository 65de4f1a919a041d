"""The contract for search beyond plain queries, on each backend (the `store` fixture):
more-like-this, similarity floors, browsing, duplicates, people, and words by their parts."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest

from server.domain import Box, InvalidArgumentError
from server.store import Filters, ImageRecord, MatchKind, Space, Vector, VectorStore
from server.store.base import Person
from tests.contract.store_data import clustered, exact_top, record

IMAGE_DIM = 1280
FACE_DIM = 128


def unit(rng: np.random.Generator, dim: int) -> Vector:
    v = rng.standard_normal(dim)
    return (v / np.linalg.norm(v)).astype(np.float32)


def cosine(a: Vector, b: Vector) -> float:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return float(a64 @ b64 / (np.linalg.norm(a64) * np.linalg.norm(b64)))


def near(rng: np.random.Generator, vector: Vector, spread: float) -> Vector:
    """A vector whose cosine to `vector` falls as `spread` grows (0.1: about 0.995)."""
    noise = rng.standard_normal(vector.shape[0]) * spread / np.sqrt(vector.shape[0])
    moved: Vector = (vector + noise).astype(np.float32)
    return moved


async def test_similar_to_excludes_the_image_and_still_returns_k(store: VectorStore) -> None:
    rng = np.random.default_rng(21)
    vectors = clustered(rng, 40, IMAGE_DIM, clusters=4)
    ids = [f"img-{i:02d}" for i in range(40)]
    await store.upsert_many([record("acme", i, v) for i, v in zip(ids, vectors, strict=True)])
    others = Filters(exclude_ids=frozenset({"img-07", "img-11"}))
    hits = await store.knn("acme", Space.IMAGES, vectors[7], k=10, filters=others)
    kept = [i for i in range(40) if ids[i] not in others.exclude_ids]
    expected = exact_top(vectors[kept], [ids[i] for i in kept], vectors[7], 10)
    assert [h.image_id for h in hits] == expected
    text = await store.search_text("acme", "nothing", 5, others)
    assert text == ()


async def test_min_score_is_a_floor_that_pages_walk_once(store: VectorStore) -> None:
    rng = np.random.default_rng(22)
    query = unit(rng, IMAGE_DIM)
    # Cosines to the query spread from about 1 down to 0: a floor of 0.5 keeps some of them.
    spreads = np.linspace(0.05, 4.0, 50)
    vectors = [near(rng, query, float(s)) for s in spreads]
    ids = [f"img-{i:02d}" for i in range(50)]
    await store.upsert_many([record("acme", i, v) for i, v in zip(ids, vectors, strict=True)])
    scores = {i: cosine(v, query) for i, v in zip(ids, vectors, strict=True)}
    above = sorted((i for i in ids if scores[i] >= 0.5), key=lambda i: (-scores[i], i))
    assert 5 < len(above) < 45
    floor = await store.knn("acme", Space.IMAGES, query, k=50, min_score=0.5)
    assert [h.image_id for h in floor] == above
    assert [h.score for h in floor] == pytest.approx([scores[i] for i in above], abs=1e-5)
    pages = [
        h.image_id
        for offset in range(0, 50, 4)
        for h in await store.knn("acme", Space.IMAGES, query, k=4, offset=offset, min_score=0.5)
    ]
    assert pages == above
    assert await store.knn("acme", Space.IMAGES, query, k=5, min_score=1.0) == ()
    with pytest.raises(InvalidArgumentError) as err:
        await store.knn("acme", Space.IMAGES, query, k=5, min_score=1.5)
    assert err.value.violations[0].path == "min_score"


async def test_person_filter_finds_images_and_faces_of_those_people(store: VectorStore) -> None:
    rng = np.random.default_rng(23)
    ann, bob = unit(rng, FACE_DIM), unit(rng, FACE_DIM)
    rows = [
        record("acme", "ann-alone", unit(rng, IMAGE_DIM), faces=[near(rng, ann, 0.3)],
               people=("p-ann",)),
        record("acme", "ann-and-bob", unit(rng, IMAGE_DIM),
               faces=[near(rng, bob, 0.3), near(rng, ann, 0.3)], people=("p-bob", "p-ann")),
        record("acme", "bob-alone", unit(rng, IMAGE_DIM), faces=[near(rng, bob, 0.3)],
               people=("p-bob",), ocr=("Bob at the harbour",)),
        record("acme", "nobody", unit(rng, IMAGE_DIM), ocr=("the harbour",)),
    ]  # fmt: skip
    await store.upsert_many(rows)
    only_ann = Filters(person_ids=frozenset({"p-ann"}))
    images = await store.knn("acme", Space.IMAGES, unit(rng, IMAGE_DIM), k=10, filters=only_ann)
    assert sorted(h.image_id for h in images) == ["ann-alone", "ann-and-bob"]
    faces = await store.knn("acme", Space.FACES, bob, k=10, filters=only_ann)
    assert sorted((h.image_id, h.face_index, h.person_id) for h in faces) == [
        ("ann-alone", 0, "p-ann"), ("ann-and-bob", 1, "p-ann")]  # fmt: skip
    everyone = await store.knn("acme", Space.FACES, bob, k=1)
    assert everyone[0].person_id == "p-bob"
    text = await store.search_text("acme", "harbour", 10, Filters(person_ids=frozenset({"p-bob"})))
    assert [h.image_id for h in text] == ["bob-alone"]
    stored = await store.get("acme", "ann-and-bob")
    assert stored is not None and [f.person_id for f in stored.faces] == ["p-bob", "p-ann"]


async def test_browse_lists_matching_images_newest_first(store: VectorStore) -> None:
    rng = np.random.default_rng(24)
    rows = [
        record("acme", f"img-{i:02d}", unit(rng, IMAGE_DIM), offset_s=i // 2,
               metadata={"album": "trip" if i % 3 else "home"})
        for i in range(30)
    ]  # fmt: skip
    await store.upsert_many([*rows, record("globex", "img-99", None, offset_s=100)])
    newest = sorted(rows, key=lambda r: (-r.created_at.timestamp(), r.image_id))
    trip = Filters(metadata={"album": "trip"})
    expected = [r.image_id for r in newest if r.metadata["album"] == "trip"]
    listed = await store.browse("acme", trip, k=100)
    assert [h.image_id for h in listed] == expected
    assert listed[0].created_at == next(r.created_at for r in rows if r.image_id == expected[0])
    pages = [h.image_id for offset in range(0, 30, 6)
             for h in await store.browse("acme", trip, k=6, offset=offset)]  # fmt: skip
    assert pages == expected
    but_one = Filters(exclude_ids=frozenset({"img-29"}))
    everything = await store.browse("acme", but_one, k=100)
    assert [h.image_id for h in everything] == [
        r.image_id for r in newest if r.image_id != "img-29"]


async def test_find_duplicate_by_bytes_then_by_cosine_floor(store: VectorStore) -> None:
    rng = np.random.default_rng(25)
    photo = unit(rng, IMAGE_DIM)
    sha = hashlib.sha256(b"the same bytes").hexdigest()
    first = record("acme", "first", photo, content_sha256=sha, offset_s=0)
    second = dataclasses.replace(record("acme", "second", unit(rng, IMAGE_DIM),
                                        content_sha256=sha, offset_s=5),
                                 duplicate_of="first")  # fmt: skip
    resized = near(rng, photo, 0.1)
    await store.upsert_many([first, second, record("globex", "theirs", photo)])
    assert await store.get("acme", "second") == second
    assert await store.find_duplicate("acme", sha, None, 0.99, "new") == "first"
    assert await store.find_duplicate("acme", sha, None, 0.99, "first") == "second"
    other_sha = hashlib.sha256(b"other bytes").hexdigest()
    assert cosine(resized, photo) > 0.99
    assert await store.find_duplicate("acme", other_sha, resized, 0.99, "new") == "first"
    assert await store.find_duplicate("acme", other_sha, resized, 0.999, "new") is None
    assert await store.find_duplicate("acme", other_sha, photo, 0.99, "first") is None
    assert await store.find_duplicate("acme", "", None, 0.99, "new") is None
    assert await store.find_duplicate("globex", sha, None, 0.99, "new") is None


def _person(found: Person | None) -> tuple[str, str, int, int, str, Box | None]:
    assert found is not None
    return (found.id, found.name, found.face_count, found.image_count, found.cover_image_id,
            found.cover_box)  # fmt: skip


async def test_people_list_rename_merge_and_vanish(store: VectorStore) -> None:
    rng = np.random.default_rng(26)
    faces = [unit(rng, FACE_DIM) for _ in range(3)]

    def photo(image_id: str, people: tuple[str, ...], offset_s: int) -> ImageRecord:
        made = record("acme", image_id, unit(rng, IMAGE_DIM), faces=faces[: len(people)],
                      people=people, offset_s=offset_s)  # fmt: skip
        # The second photo's faces score highest, so it is every person's cover.
        best = 0.99 if image_id == "b" else 0.9
        return dataclasses.replace(
            made, faces=tuple(dataclasses.replace(f, score=best) for f in made.faces))

    await store.upsert_many([
        photo("a", ("p-1", "p-2"), 0), photo("b", ("p-1", "p-3"), 1), photo("c", ("p-1",), 2),
        record("globex", "x", None, faces=[faces[0]], people=("p-1",)),
    ])  # fmt: skip
    listed = [_person(p) for p in await store.list_people("acme", k=10)]
    box0, box1 = Box(0.0, 5.0, 40.0, 60.0), Box(5.0, 5.0, 45.0, 60.0)
    assert listed == [("p-1", "", 3, 3, "b", box0), ("p-2", "", 1, 1, "a", box1),
                      ("p-3", "", 1, 1, "b", box1)]  # fmt: skip
    assert [p.id for p in await store.list_people("acme", k=2, offset=1)] == ["p-2", "p-3"]
    assert _person(await store.rename_person("acme", "p-2", "Ann")) == (
        "p-2", "Ann", 1, 1, "a", box1)  # fmt: skip
    assert await store.rename_person("acme", "p-9", "Nobody") is None
    assert await store.get_person("acme", "p-9") is None
    assert await store.get_person("globex", "p-2") is None
    # A re-ingest of another image leaves the name alone.
    await store.upsert(photo("c", ("p-1",), 2))
    assert _person(await store.get_person("acme", "p-2"))[1] == "Ann"

    merged = await store.merge_people("acme", frozenset({"p-3"}), "p-2")
    assert _person(merged) == ("p-2", "Ann", 2, 2, "b", box1)
    assert await store.get_person("acme", "p-3") is None
    stored = await store.get("acme", "b")
    assert stored is not None and [f.person_id for f in stored.faces] == ["p-1", "p-2"]
    assert await store.merge_people("acme", frozenset({"p-1"}), "p-9") is None
    assert _person(await store.get_person("globex", "p-1"))[2] == 1  # other tenants untouched

    # A person whose last face is deleted disappears from list and get.
    await store.upsert(photo("a", ("p-1",), 0))
    await store.delete("acme", "b")
    assert [p.id for p in await store.list_people("acme", k=10)] == ["p-1"]
    assert await store.get_person("acme", "p-2") is None


async def test_words_match_by_their_parts_after_whole_words(store: VectorStore) -> None:
    rng = np.random.default_rng(27)
    await store.upsert_many([
        record("acme", "harbour", unit(rng, IMAGE_DIM), ocr=("Old Harbour Café",)),
        record("acme", "berries", unit(rng, IMAGE_DIM), ocr=("Blueberry jam",),
               labels=("strawberry",)),
        record("acme", "plate", unit(rng, IMAGE_DIM), ocr=("RE16 TGK",)),
        record("acme", "exact", unit(rng, IMAGE_DIM), ocr=("blueber farm",)),
    ])  # fmt: skip
    arbou = await store.search_text("acme", "arbou", 10)
    assert [(h.image_id, [(m.kind, m.text) for m in h.matches]) for h in arbou] == [
        ("harbour", [(MatchKind.OCR_LINE, "Old Harbour Café")])]  # fmt: skip
    blueber = await store.search_text("acme", "Blueber", 10)
    assert [h.image_id for h in blueber] == ["exact", "berries"]  # the whole word first
    assert blueber[0].score > 0 > blueber[1].score
    assert [(m.kind, m.text) for m in blueber[1].matches] == [(MatchKind.OCR_LINE, "Blueberry jam")]
    berry = await store.search_text("acme", "BERRY", 10)
    assert [(h.image_id, [m.kind for m in h.matches]) for h in berry] == [
        ("berries", [MatchKind.OCR_LINE, MatchKind.LABEL])]  # fmt: skip
    assert [h.image_id for h in await store.search_text("acme", "re16", 10)] == ["plate"]
    assert await store.search_text("acme", "e1", 10) == ()  # two letters: whole words only
    assert [h.image_id for h in await store.search_text("acme", "cafe", 10)] == ["harbour"]
    assert [h.image_id for h in await store.search_text("acme", "arbo", 10)] == ["harbour"]


async def test_bad_arguments_of_the_new_calls_name_their_field(store: VectorStore) -> None:
    rng = np.random.default_rng(28)
    bad_sha = record("acme", "x", None, content_sha256="ABC")
    cases = [
        (store.upsert(bad_sha), "content_sha256"),
        (store.upsert(record("acme", "x", None, faces=[unit(rng, FACE_DIM)], people=("p" * 129,))),
         "faces[0].person_id"),
        (store.find_duplicate("acme", "", None, 2.0, "x"), "min_cosine"),
        (store.find_duplicate("acme", "", unit(rng, 8), 0.9, "x"), "embedding"),
        (store.rename_person("acme", "p-1", "n" * 257), "name"),
        (store.get_person("acme", ""), "person_id"),
        (store.merge_people("acme", frozenset({""}), "p-1"), "person_ids[0]"),
        (store.browse("acme", Filters(exclude_ids=frozenset({""})), 5), "filters.exclude_ids[0]"),
        (store.list_people("acme", 0), "k"),
    ]  # fmt: skip
    for call, path in cases:
        with pytest.raises(InvalidArgumentError) as err:
            await call
        assert err.value.violations[0].path == path
