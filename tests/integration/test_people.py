"""People end to end through the real server and Triton: faces of ingested photos grouped into
persons (the same man in three photos is one person; the faces of one group photo are all
different people), listed, renamed and merged, with names surviving the ingest of other images
and a restart, people vanishing with their last face, and NOT_FOUND naming the field."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import pytest_asyncio

from server.app import RunningServer, create_server
from server.settings import Settings
from tests.images import photo
from tests.integration.conftest import settings_for
from tests.integration.status_details import status_of, violations
from vision.v1 import image_pb2, ingest_pb2, person_pb2
from vision.v1 import ingest_service_pb2 as ing_pb2
from vision.v1 import ingest_service_pb2_grpc as ing_grpc
from vision.v1 import people_service_pb2 as people_pb2
from vision.v1 import people_service_pb2_grpc as people_grpc

OBAMA = ("obama.jpg", "obama2.jpg", "obama3.jpg")
PHOTOS = (*OBAMA, "biden.jpg", "sample1.jpg")


@dataclass
class Album:
    settings: Settings
    running: RunningServer
    channel: grpc.aio.Channel

    @property
    def people(self) -> people_grpc.PeopleServiceAsyncStub:
        return people_grpc.PeopleServiceStub(self.channel)

    @property
    def ingest(self) -> ing_grpc.IngestServiceAsyncStub:
        return ing_grpc.IngestServiceStub(self.channel)

    async def restart(self) -> None:
        await self.channel.close()
        await self.running.stop(grace_s=1)
        self.running = await create_server(self.settings)
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.running.port}")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def album(triton_url: str) -> AsyncIterator[Album]:
    """A server of its own with the people photos ingested one at a time (in a fixed order,
    so the people formed do not depend on timing)."""
    settings = settings_for(triton_url)
    running = await create_server(settings)
    given = Album(settings, running, grpc.aio.insecure_channel(f"127.0.0.1:{running.port}"))
    for name in PHOTOS:
        await ingest(given, name, name)
    try:
        yield given
    finally:
        await given.channel.close()
        await given.running.stop(grace_s=1)


async def ingest(album: Album, image_id: str, name: str) -> ingest_pb2.IndexedImage:
    response = await album.ingest.IngestImage(ing_pb2.IngestImageRequest(
        options=ingest_pb2.IngestOptions(id=image_id),
        image=image_pb2.Image(content=photo(name))), timeout=120)
    return response.image


async def faces(album: Album, image_id: str) -> list[str]:
    image = (await album.ingest.GetImage(ing_pb2.GetImageRequest(id=image_id))).image
    return [face.person_id for face in image.faces]


async def everyone(album: Album, page_size: int = 0) -> list[person_pb2.Person]:
    found: list[person_pb2.Person] = []
    token = ""
    while True:
        page = await album.people.ListPeople(people_pb2.ListPeopleRequest(
            page_size=page_size, page_token=token))
        found += page.people
        token = page.next_page_token
        if not token:
            return found


async def test_faces_form_people_and_the_most_photographed_comes_first(album: Album) -> None:
    (obama,) = {p for name in OBAMA for p in await faces(album, name)}
    (biden,) = await faces(album, "biden.jpg")
    group = await faces(album, "sample1.jpg")
    assert len(group) == 3 and len(set(group)) == 3  # one photo: three different people
    assert len({obama, biden, *group}) == 5
    listed = await everyone(album)
    assert [p.id for p in listed][0] == obama
    assert sorted(p.id for p in listed) == sorted({obama, biden, *group})
    assert [p.id for p in await everyone(album, page_size=2)] == [p.id for p in listed]
    person = (await album.people.GetPerson(people_pb2.GetPersonRequest(id=obama))).person
    assert (person.face_count, person.image_count, person.name) == (3, 3, "")
    assert person.cover_image_id in OBAMA
    cover = (await album.ingest.GetImage(ing_pb2.GetImageRequest(
        id=person.cover_image_id))).image.faces[0]
    assert person.cover_box == cover.box
    best = max([(await album.ingest.GetImage(ing_pb2.GetImageRequest(id=name))).image.faces[0]
                for name in OBAMA], key=lambda face: face.score)
    assert cover.score == best.score


async def test_a_name_survives_other_ingests_and_a_restart(album: Album) -> None:
    (obama,) = await faces(album, "obama2.jpg")
    renamed = await album.people.UpdatePerson(people_pb2.UpdatePersonRequest(
        person=person_pb2.Person(id=obama, name="Barack Obama")))
    assert (renamed.person.id, renamed.person.name) == (obama, "Barack Obama")
    await ingest(album, "chelsea.png", "chelsea.png")
    await ingest(album, "obama-again", "obama3.jpg")  # a new image of a named person
    assert await faces(album, "obama-again") == [obama]
    await album.restart()
    person = (await album.people.GetPerson(people_pb2.GetPersonRequest(id=obama))).person
    assert (person.name, person.face_count) == ("Barack Obama", 4)
    await album.ingest.DeleteImage(ing_pb2.DeleteImageRequest(id="obama-again"))


async def test_merging_moves_every_face_and_the_source_disappears(album: Album) -> None:
    (obama,) = await faces(album, "obama.jpg")
    (biden,) = await faces(album, "biden.jpg")
    merged = (await album.people.MergePeople(people_pb2.MergePeopleRequest(
        person_ids=[biden], target_id=obama))).person
    assert (merged.id, merged.face_count, merged.image_count) == (obama, 4, 4)
    assert merged.name == "Barack Obama"
    assert await faces(album, "biden.jpg") == [obama]
    assert biden not in [p.id for p in await everyone(album)]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await album.people.GetPerson(people_pb2.GetPersonRequest(id=biden))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert violations(status_of(caught.value)) == ["id"]


async def test_a_person_whose_last_face_is_deleted_disappears(album: Album) -> None:
    group = await faces(album, "sample1.jpg")
    await album.ingest.DeleteImage(ing_pb2.DeleteImageRequest(id="sample1.jpg"))
    listed = {p.id for p in await everyone(album)}
    assert not set(group) & listed
    assert set(await faces(album, "obama.jpg")) <= listed


async def test_unknown_people_and_bad_arguments(album: Album) -> None:
    (obama,) = await faces(album, "obama.jpg")
    calls: list[tuple[Awaitable[Any], grpc.StatusCode, list[str]]] = [
        (album.people.GetPerson(people_pb2.GetPersonRequest(id="p-nobody")),
         grpc.StatusCode.NOT_FOUND, ["id"]),
        (album.people.UpdatePerson(people_pb2.UpdatePersonRequest(
            person=person_pb2.Person(id="p-nobody", name="x"))),
         grpc.StatusCode.NOT_FOUND, ["person.id"]),
        (album.people.MergePeople(people_pb2.MergePeopleRequest(
            person_ids=[obama], target_id="p-nobody")),
         grpc.StatusCode.NOT_FOUND, ["target_id"]),
        (album.people.MergePeople(people_pb2.MergePeopleRequest(
            person_ids=["p-nobody"], target_id=obama)),
         grpc.StatusCode.NOT_FOUND, ["person_ids[0]"]),
        (album.people.MergePeople(people_pb2.MergePeopleRequest(target_id=obama)),
         grpc.StatusCode.INVALID_ARGUMENT, ["person_ids"]),
        (album.people.UpdatePerson(people_pb2.UpdatePersonRequest(
            person=person_pb2.Person(id=obama, name="x" * 257))),
         grpc.StatusCode.INVALID_ARGUMENT, ["person.name"]),
        (album.people.ListPeople(people_pb2.ListPeopleRequest(page_token="nonsense")),
         grpc.StatusCode.INVALID_ARGUMENT, ["page_token"]),
    ]
    for call, code, fields in calls:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert (caught.value.code(), violations(status_of(caught.value))) == (code, fields)
