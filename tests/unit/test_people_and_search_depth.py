"""People assignment, the people pipeline's checks, and the search pipeline's similar_to_id,
min_score, person_ids and browse rules, over a small in-memory store (exact cosine by numpy);
the real stores are checked by tests/contract and the whole path by tests/integration."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import numpy as np
import pytest

from server.domain import Box, InvalidArgumentError, NotFoundError
from server.pipeline.embedding import EmbeddingPipeline
from server.pipeline.faces import FacesPipeline
from server.pipeline.people import PeoplePipeline, assign_people
from server.pipeline.search import FiltersInput, SearchInput, SearchPipeline
from server.store.base import (
    NO_FILTERS,
    BrowseHit,
    FaceRecord,
    Filters,
    ImageRecord,
    IndexKind,
    Person,
    Space,
    Vector,
    VectorHit,
    VectorStore,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def unit(*values: float) -> Vector:
    vector = np.zeros(4, np.float32)
    vector[: len(values)] = values
    return vector / np.linalg.norm(vector)


def face(embedding: Vector, score: float = 0.9, person_id: str = "") -> FaceRecord:
    return FaceRecord(Box(0, 0, 10, 10), score, embedding, person_id)


class MemoryStore:
    """Just enough of VectorStore for the pipeline's decisions; records every knn call."""

    def __init__(self, *records: ImageRecord) -> None:
        self.records = {r.image_id: r for r in records}
        self.knn_calls: list[dict[str, Any]] = []
        self.browse_calls: list[tuple[Filters, int, int]] = []
        self.merged: list[tuple[frozenset[str], str]] = []

    async def get(self, tenant: str, image_id: str) -> ImageRecord | None:
        return self.records.get(image_id)

    async def knn(self, tenant: str, space: Space, vector: Vector, k: int,
                  filters: Filters = NO_FILTERS, offset: int = 0,
                  min_score: float | None = None) -> tuple[VectorHit, ...]:
        self.knn_calls.append({"space": space, "filters": filters, "min_score": min_score})
        hits = []
        for record in self.records.values():
            if record.image_id in filters.exclude_ids:
                continue
            if space is Space.IMAGES and record.embedding is not None:
                hits.append(VectorHit(record.image_id, float(record.embedding @ vector), space))
            for i, f in enumerate(record.faces if space is Space.FACES else ()):
                hits.append(VectorHit(record.image_id, float(f.embedding @ vector), space, i,
                                      f.box, f.person_id))
        kept = [h for h in hits if min_score is None or h.score >= min_score]
        kept.sort(key=lambda h: (-h.score, h.image_id))
        return tuple(kept[offset:offset + k])

    async def browse(self, tenant: str, filters: Filters, k: int,
                     offset: int = 0) -> tuple[BrowseHit, ...]:
        self.browse_calls.append((filters, k, offset))
        ordered = sorted(self.records.values(), key=lambda r: (-r.created_at.timestamp(),
                                                               r.image_id))
        return tuple(BrowseHit(r.image_id, r.created_at) for r in ordered)[offset:offset + k]

    def _person(self, person_id: str) -> Person | None:
        faces = [(r.image_id, f) for r in self.records.values() for f in r.faces
                 if f.person_id == person_id]
        if not faces:
            return None
        cover_image, cover = max(faces, key=lambda pair: pair[1].score)
        return Person(person_id, "", len(faces), len({i for i, _ in faces}), cover_image,
                      cover.box)

    async def get_person(self, tenant: str, person_id: str) -> Person | None:
        return self._person(person_id)

    async def rename_person(self, tenant: str, person_id: str, name: str) -> Person | None:
        found = self._person(person_id)
        return replace(found, name=name) if found else None

    async def merge_people(self, tenant: str, person_ids: frozenset[str],
                           target_id: str) -> Person | None:
        self.merged.append((person_ids, target_id))
        return self._person(target_id)

    async def list_people(self, tenant: str, k: int, offset: int = 0) -> tuple[Person, ...]:
        ids = sorted({f.person_id for r in self.records.values() for f in r.faces})
        people = [p for p in map(self._person, ids) if p is not None]
        people.sort(key=lambda p: (-p.face_count, p.id))
        return tuple(people[offset:offset + k])


def store_of(*records: ImageRecord) -> tuple[MemoryStore, VectorStore]:
    memory = MemoryStore(*records)
    return memory, cast(VectorStore, memory)


def record(image_id: str, *faces: FaceRecord, embedding: Vector | None = None,
           age_s: int = 0) -> ImageRecord:
    return ImageRecord("t", image_id, T0 - timedelta(seconds=age_s), 10, 10,
                       embedding=embedding, faces=faces)


async def test_a_face_joins_the_nearest_person_at_or_above_the_match_cosine() -> None:
    _, store = store_of(record("old", face(unit(1, 0), person_id="p-ann"),
                               face(unit(0, 1), person_id="p-bob")))
    new = record("new", face(unit(1, 0.3)), face(unit(0.2, 0.1, 1)))
    assigned = await assign_people(store, new, match_cosine=0.55)
    ann, stranger = (f.person_id for f in assigned.faces)
    assert ann == "p-ann"
    # cos(stranger, ann) = 0.19: below the floor, so a new person
    assert stranger.startswith("p-") and stranger not in ("p-ann", "p-bob")


async def test_two_faces_of_one_image_never_join_one_person() -> None:
    _, store = store_of(record("old", face(unit(1, 0), person_id="p-ann")))
    # Both resemble Ann; the better-detected face (0.95) takes her, the other starts anew.
    new = record("new", face(unit(1, 0.2), score=0.7), face(unit(1, 0.1), score=0.95))
    first, second = (await assign_people(store, new, 0.55)).faces
    assert second.person_id == "p-ann"
    assert first.person_id not in ("", "p-ann")


async def test_the_assignment_asks_the_store_for_neighbours_above_the_floor() -> None:
    memory, store = store_of()
    await assign_people(store, record("new", face(unit(1))), 0.6)
    assert [(c["space"], c["min_score"]) for c in memory.knn_calls] == [(Space.FACES, 0.6)]


def search_pipeline(store: VectorStore) -> SearchPipeline:
    # Image and face queries need Triton; the queries tested here never reach it.
    return SearchPipeline(cast(EmbeddingPipeline, None), cast(FacesPipeline, None), store,
                          {Space.IMAGES: 4, Space.FACES: 4})


async def test_similar_to_id_searches_with_the_stored_embedding_and_skips_that_image() -> None:
    memory, store = store_of(record("a", embedding=unit(1, 0)),
                             record("b", embedding=unit(1, 0.1)),
                             record("c", embedding=unit(0, 1)))
    page = await search_pipeline(store).search(
        "t", SearchInput(similar_to_id="a", min_score=0.5), "r", None)
    assert [h.image_id for h in page.hits] == ["b"]
    assert page.hits[0].score == pytest.approx(float(unit(1, 0) @ unit(1, 0.1)))
    assert memory.knn_calls[0]["filters"].exclude_ids == {"a"}


async def test_an_unknown_similar_to_id_is_not_found_naming_the_field() -> None:
    _, store = store_of()
    with pytest.raises(NotFoundError) as caught:
        await search_pipeline(store).search("t", SearchInput(similar_to_id="nope"), "r", None)
    assert (caught.value.path, caught.value.name) == ("similar_to_id", "nope")


@pytest.mark.parametrize("given", [
    SearchInput(text="cat", min_score=0.3),
    SearchInput(filters=FiltersInput(labels=("cat",)), min_score=0.3),
    SearchInput(vector=(1.0, 0, 0, 0), vector_index=IndexKind.IMAGES, min_score=float("nan")),
    SearchInput(similar_to_id="a", min_score=1.5),
])
async def test_min_score_is_refused_where_scores_are_not_cosines_or_out_of_range(
    given: SearchInput,
) -> None:
    _, store = store_of()
    with pytest.raises(InvalidArgumentError) as caught:
        await search_pipeline(store).search("t", given, "r", None)
    assert "min_score" in [v.path for v in caught.value.violations]


async def test_no_query_and_no_filter_is_refused_and_indexes_alone_is_no_filter() -> None:
    _, store = store_of()
    for given in (SearchInput(), SearchInput(filters=FiltersInput(indexes=()))):
        with pytest.raises(InvalidArgumentError) as caught:
            await search_pipeline(store).search("t", given, "r", None)
        assert [v.path for v in caught.value.violations] == ["query"]


async def test_browsing_pages_newest_first_through_the_store() -> None:
    memory, store = store_of(*(record(f"i{n}", age_s=n) for n in range(5)))
    given = SearchInput(filters=FiltersInput(person_ids=("p-ann",)), page_size=2)
    seen: list[str] = []
    token = ""
    while True:
        page = await search_pipeline(store).search("t", replace(given, page_token=token), "r",
                                                   None)
        seen += [h.image_id for h in page.hits]
        assert all(h.score == 0 for h in page.hits)
        token = page.next_page_token
        if not token:
            break
    assert seen == ["i0", "i1", "i2", "i3", "i4"]
    assert [(f.person_ids, k, offset) for f, k, offset in memory.browse_calls] == [
        (frozenset({"p-ann"}), 3, 0), (frozenset({"p-ann"}), 3, 2), (frozenset({"p-ann"}), 3, 4)]


async def test_person_ids_are_checked() -> None:
    _, store = store_of()
    given = SearchInput(filters=FiltersInput(person_ids=("ok", "", "x" * 300)))
    with pytest.raises(InvalidArgumentError) as caught:
        await search_pipeline(store).search("t", given, "r", None)
    assert [v.path for v in caught.value.violations] == [
        "filters.person_ids[1]", "filters.person_ids[2]"]


async def test_people_are_listed_most_faces_first_and_paged() -> None:
    _, store = store_of(record("a", face(unit(1), person_id="p-1"), face(unit(0, 1),
                                                                          person_id="p-2")),
                        record("b", face(unit(1), person_id="p-2")))
    people = PeoplePipeline(store)
    first = await people.list("t", 1, "")
    assert [p.id for p in first.people] == ["p-2"]
    second = await people.list("t", 1, first.next_page_token)
    assert ([p.id for p in second.people], second.next_page_token) == (["p-1"], "")
    with pytest.raises(InvalidArgumentError):
        await people.list("t", 1, "garbage")


async def test_unknown_people_are_not_found_naming_the_field() -> None:
    memory, store = store_of(record("a", face(unit(1), person_id="p-1"),
                                    face(unit(0, 1), person_id="p-2")))
    people = PeoplePipeline(store)
    cases = [(people.get("t", "p-9"), "id"),
             (people.rename("t", "p-9", "Ann"), "person.id"),
             (people.merge("t", ("p-1",), "p-9"), "target_id"),
             (people.merge("t", ("p-1", "p-9"), "p-2"), "person_ids[1]")]
    for call, path in cases:
        with pytest.raises(NotFoundError) as caught:
            await call
        assert caught.value.path == path
    assert memory.merged == []
    merged = await people.merge("t", ("p-1", "p-1"), "p-2")
    assert merged.id == "p-2" and memory.merged == [(frozenset({"p-1"}), "p-2")]


async def test_merge_and_rename_arguments_are_checked() -> None:
    _, store = store_of()
    people = PeoplePipeline(store)
    for call, path in [(people.merge("t", (), "p-1"), "person_ids"),
                       (people.merge("t", ("p-1",), "p-1"), "person_ids[0]"),
                       (people.merge("t", ("p-1",), ""), "target_id"),
                       (people.rename("t", "p-1", "a\nb"), "person.name"),
                       (people.rename("t", "p-1", "x" * 257), "person.name")]:
        with pytest.raises(InvalidArgumentError) as caught:
            await call
        assert [v.path for v in caught.value.violations] == [path]
