"""Ingest and search end to end: every test photo indexed through the real server and Triton,
then found again by a similar photo, a face, words, labels and filters; pages, deletes, get and
bad input; more like a stored image, score floors, browsing by filter and by person, and
duplicates recognised at ingest."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import cv2
import grpc
import pytest
import pytest_asyncio
from google.rpc import code_pb2

from server.app import RunningServer, create_server
from tests.images import decode, photo
from tests.integration.conftest import settings_for
from tests.integration.status_details import reason, status_of, violations
from tests.integration.test_analysis_services import CORRUPT, PHOTOS
from tests.integration.test_triton_embedding import chelsea_smaller_jpeg
from vision.v1 import image_pb2, ingest_pb2, upload_pb2
from vision.v1 import ingest_service_pb2 as ing_pb2
from vision.v1 import ingest_service_pb2_grpc as ing_grpc
from vision.v1 import search_service_pb2 as search_pb2
from vision.v1 import search_service_pb2_grpc as search_grpc
from vision_client import IngestImage, VisionClient, upload_messages


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def indexed(triton_url: str) -> AsyncIterator[grpc.aio.Channel]:
    """A server of its own with every test photo ingested under its file name, the even ones
    over one upload stream and the odd ones unary."""
    running: RunningServer = await create_server(settings_for(triton_url))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    ingest = ing_grpc.IngestServiceStub(channel)
    streamed, unary = PHOTOS[::2], PHOTOS[1::2]
    async with VisionClient(f"127.0.0.1:{running.port}", timeout_s=300) as client:
        results = [r async for r in client.stream_ingest(
            IngestImage(name, photo(name), {"n": str(PHOTOS.index(name)), "kind": "photo"})
            for name in streamed)]
    assert sorted(r.request_id for r in results) == sorted(streamed)
    assert all(r.status.code == 0 for r in results), [r.status for r in results]
    await asyncio.gather(*(ingest.IngestImage(ing_pb2.IngestImageRequest(
        options=ingest_pb2.IngestOptions(id=name, metadata={"n": str(PHOTOS.index(name))}),
        image=image_pb2.Image(content=photo(name))), timeout=300) for name in unary))
    try:
        yield channel
    finally:
        await channel.close()
        await running.stop(grace_s=1)


async def search(channel: grpc.aio.Channel, **fields: object) -> search_pb2.SearchResponse:
    stub = search_grpc.SearchServiceStub(channel)
    response: search_pb2.SearchResponse = await stub.Search(
        search_pb2.SearchRequest(**fields), timeout=60)  # type: ignore[arg-type]
    return response


def ids(response: search_pb2.SearchResponse) -> list[str]:
    return [hit.id for hit in response.hits]


async def test_a_smaller_copy_of_chelsea_finds_chelsea_first(indexed: grpc.aio.Channel) -> None:
    response = await search(indexed, image=image_pb2.Image(content=chelsea_smaller_jpeg()))
    assert ids(response)[0] == "chelsea.png"
    assert response.hits[0].score >= 0.9
    assert list(response.hits[0].indexes) == [search_pb2.INDEX_IMAGES]


async def test_a_face_finds_the_same_person_above_everyone_else(
    indexed: grpc.aio.Channel,
) -> None:
    response = await search(indexed, face_image=image_pb2.Image(content=photo("obama2.jpg")),
                            page_size=20)
    found = ids(response)
    assert found[0] == "obama2.jpg"
    assert set(found[1:3]) == {"obama.jpg", "obama3.jpg"}, found
    assert response.hits[1].matches[0].index == search_pb2.INDEX_FACES
    assert response.hits[1].matches[0].box.x_max > 0


@pytest.mark.parametrize(("text", "expected", "index"), [
    ("Invoice", "synthetic_text.png", search_pb2.INDEX_OCR),
    ("segmentation", "page.png", search_pb2.INDEX_OCR),
    ("cat", "chelsea.png", search_pb2.INDEX_IMAGES),
    ("cup", "coffee.png", search_pb2.INDEX_OBJECTS),
])
async def test_words_find_labels_and_text(indexed: grpc.aio.Channel, text: str, expected: str,
                                          index: int) -> None:
    response = await search(indexed, text=text)
    assert ids(response)[0] == expected, [(h.id, h.score) for h in response.hits]
    assert index in response.hits[0].indexes


async def test_label_and_metadata_filters(indexed: grpc.aio.Channel) -> None:
    cups = await search(indexed, text="cup espresso",
                        filters=search_pb2.SearchFilters(labels=["cup"]))
    assert ids(cups) == ["coffee.png"]
    everything = image_pb2.Image(content=photo("astronaut.png"))
    streamed = await search(indexed, image=everything, page_size=50,
                            filters=search_pb2.SearchFilters(metadata={"kind": "photo"}))
    assert sorted(ids(streamed)) == sorted(PHOTOS[::2])
    low = await search(indexed, image=everything, page_size=50, filters=search_pb2.SearchFilters(
        ranges=[search_pb2.MetadataRange(key="n", gte="2", lte="4", numeric=True)]))
    assert sorted(ids(low)) == sorted(PHOTOS[2:5])


async def test_pages_walk_every_hit_once_in_order(indexed: grpc.aio.Channel) -> None:
    query = image_pb2.Image(content=photo("coffee.png"))
    whole = ids(await search(indexed, image=query, page_size=100))
    assert sorted(whole) == sorted(PHOTOS)
    walked, token = [], ""
    while True:
        page = await search(indexed, image=query, page_size=4, page_token=token)
        walked += ids(page)
        token = page.next_page_token
        if not token:
            break
    assert walked == whole
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await search(indexed, text="cat", page_size=4, page_token=page.next_page_token or "eA==")
    assert violations(status_of(caught.value)) == ["page_token"]


async def test_get_delete_and_reingest_replace_everything(indexed: grpc.aio.Channel) -> None:
    ingest = ing_grpc.IngestServiceStub(indexed)
    got = (await ingest.GetImage(ing_pb2.GetImageRequest(id="sample1.jpg"))).image
    assert len(got.faces) == 3 and got.metadata["n"] == str(PHOTOS.index("sample1.jpg"))
    assert "person" in {label.label for label in got.labels}
    stored = (await ingest.IngestImage(ing_pb2.IngestImageRequest(
        options=ingest_pb2.IngestOptions(id="sample1.jpg", metadata={"again": "yes"}),
        image=image_pb2.Image(content=photo("chelsea.png"))))).image
    assert stored.duplicate_of == "chelsea.png"  # the same bytes, stored all the same
    replaced = (await ingest.GetImage(ing_pb2.GetImageRequest(id="sample1.jpg"))).image
    assert len(replaced.faces) == 0 and dict(replaced.metadata) == {"again": "yes"}
    assert replaced.duplicate_of == "chelsea.png"
    cats = ids(await search(indexed, text="cat", page_size=50))
    assert "sample1.jpg" in cats
    await ingest.DeleteImage(ing_pb2.DeleteImageRequest(id="sample1.jpg"))
    by_text = await search(indexed, text="cat", page_size=50)
    by_image = await search(indexed, image=image_pb2.Image(content=photo("chelsea.png")),
                            page_size=50)
    assert "sample1.jpg" not in ids(by_text) + ids(by_image)
    for call in (ingest.GetImage(ing_pb2.GetImageRequest(id="sample1.jpg")),
                 ingest.DeleteImage(ing_pb2.DeleteImageRequest(id="sample1.jpg"))):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert violations(status_of(caught.value)) == ["id"]
    await ingest.IngestImage(ing_pb2.IngestImageRequest(
        options=ingest_pb2.IngestOptions(id="sample1.jpg",
                                         metadata={"n": str(PHOTOS.index("sample1.jpg"))}),
        image=image_pb2.Image(content=photo("sample1.jpg"))))


async def test_bad_ingest_and_search_requests(indexed: grpc.aio.Channel) -> None:
    ingest = ing_grpc.IngestServiceStub(indexed)
    cases = [
        (ing_pb2.IngestImageRequest(options=ingest_pb2.IngestOptions(id=""),
                                    image=image_pb2.Image(content=photo("coffee.png"))),
         "INVALID_ARGUMENT", ["options.id"]),
        (ing_pb2.IngestImageRequest(options=ingest_pb2.IngestOptions(id="x" * 257),
                                    image=image_pb2.Image(content=photo("coffee.png"))),
         "INVALID_ARGUMENT", ["options.id"]),
        (ing_pb2.IngestImageRequest(options=ingest_pb2.IngestOptions(
            id="m", metadata={f"k{i}": "v" for i in range(65)}),
            image=image_pb2.Image(content=photo("coffee.png"))),
         "INVALID_ARGUMENT", ["options.metadata"]),
        (ing_pb2.IngestImageRequest(options=ingest_pb2.IngestOptions(id="corrupt"),
                                    image=image_pb2.Image(content=CORRUPT)),
         "IMAGE_DECODE_FAILED", ["image.content"]),
    ]
    for request, why, fields in cases:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await ingest.IngestImage(request, timeout=60)
        assert (reason(status_of(caught.value)), violations(status_of(caught.value))) == (
            why, fields)
    with pytest.raises(grpc.aio.AioRpcError):
        await ingest.GetImage(ing_pb2.GetImageRequest(id="corrupt"))  # nothing partial
    searches: list[tuple[dict[str, object], list[str]]] = [
        ({"vector": search_pb2.VectorQuery(values=[1.0] * 10, index=search_pb2.INDEX_IMAGES)},
         ["vector.values"]),
        ({"vector": search_pb2.VectorQuery(values=[1.0] * 128)}, ["vector.index"]),
        ({"text": "cat", "page_size": 101}, ["page_size"]),
        ({"text": "   "}, ["text"]),
        ({}, ["query"]),
        ({"face_image": image_pb2.Image(content=photo("coffee.png"))}, ["face_image.content"]),
        ({"image": image_pb2.Image(content=b"")}, ["image.content"]),
    ]
    for fields_given, fields in searches:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await search(indexed, **fields_given)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violations(status_of(caught.value)) == fields, fields_given
    stream = ing_grpc.IngestServiceStub(indexed).StreamIngestImages(upload_messages(
        ing_pb2.StreamIngestImagesRequest,
        [(upload_pb2.UploadHeader(request_id="r", size_bytes=3,
                                  ingest=ingest_pb2.IngestOptions(id="")), b"abc")]))
    (result,) = [r async for r in stream]
    assert result.status.code == code_pb2.INVALID_ARGUMENT
    assert violations(result.status) == ["header.ingest.id"]


async def test_more_like_a_stored_image_ranks_as_its_own_photo_would_without_itself(
    indexed: grpc.aio.Channel,
) -> None:
    by_photo = await search(indexed, image=image_pb2.Image(content=photo("obama.jpg")),
                            page_size=50)
    similar = await search(indexed, similar_to_id="obama.jpg", page_size=50)
    assert ids(by_photo)[0] == "obama.jpg"
    assert ids(similar) == ids(by_photo)[1:]
    assert [h.score for h in similar.hits] == pytest.approx(
        [h.score for h in by_photo.hits[1:]], abs=1e-4)
    assert list(similar.hits[0].indexes) == [search_pb2.INDEX_IMAGES]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await search(indexed, similar_to_id="no-such-image")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert violations(status_of(caught.value)) == ["similar_to_id"]


async def test_a_score_floor_ends_the_hits_and_paging_walks_each_once(
    indexed: grpc.aio.Channel,
) -> None:
    query = image_pb2.Image(content=photo("sample4.jpg"))
    whole = await search(indexed, image=query, page_size=100)
    floor = 0.6
    above = [h.id for h in whole.hits if h.score >= floor]
    assert 2 <= len(above) < len(whole.hits)  # the floor cuts inside the ranking
    walked, token = [], ""
    while True:
        page = await search(indexed, image=query, page_size=2, page_token=token,
                            min_score=floor)
        assert all(h.score >= floor for h in page.hits)
        walked += ids(page)
        token = page.next_page_token
        if not token:
            break
    assert walked == above
    for fields_given in ({"text": "cat", "min_score": 0.5},
                         {"filters": search_pb2.SearchFilters(labels=["cat"]), "min_score": 0.5},
                         {"similar_to_id": "obama.jpg", "min_score": 1.5}):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await search(indexed, **fields_given)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert violations(status_of(caught.value)) == ["min_score"], fields_given


async def created(channel: grpc.aio.Channel, image_id: str) -> tuple[float, str]:
    image = (await ing_grpc.IngestServiceStub(channel).GetImage(
        ing_pb2.GetImageRequest(id=image_id))).image
    return image.create_time.ToDatetime().timestamp(), image.id


async def test_browsing_by_filter_lists_every_match_newest_first(
    indexed: grpc.aio.Channel,
) -> None:
    filters = search_pb2.SearchFilters(metadata={"kind": "photo"})
    walked, token = [], ""
    while True:
        page = await search(indexed, filters=filters, page_size=3, page_token=token)
        assert all(h.score == 0 for h in page.hits)
        walked += ids(page)
        token = page.next_page_token
        if not token:
            break
    times = [await created(indexed, image_id) for image_id in PHOTOS[::2]]
    assert walked == [image_id for _, image_id in sorted(times, key=lambda t: (-t[0], t[1]))]


async def test_faces_of_one_person_are_found_by_person_and_two_in_one_photo_differ(
    indexed: grpc.aio.Channel,
) -> None:
    ingest = ing_grpc.IngestServiceStub(indexed)
    faces = {name: list((await ingest.GetImage(ing_pb2.GetImageRequest(id=name))).image.faces)
             for name in ("obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg", "sample4.jpg")}
    obama = {f.person_id for name in ("obama.jpg", "obama2.jpg", "obama3.jpg")
             for f in faces[name]}
    assert len(obama) == 1 and "" not in obama
    (person,) = obama
    biden = faces["biden.jpg"][0].person_id
    group = [f.person_id for f in faces["sample4.jpg"]]
    assert len(group) >= 2 and len(set(group)) == len(group)  # one photo, different people
    assert biden not in obama and not obama & set(group)
    browsed = await search(indexed, filters=search_pb2.SearchFilters(person_ids=[person]))
    assert sorted(ids(browsed)) == ["obama.jpg", "obama2.jpg", "obama3.jpg"]
    by_face = await search(indexed, face_image=image_pb2.Image(content=photo("obama2.jpg")),
                           filters=search_pb2.SearchFilters(person_ids=[biden]))
    assert ids(by_face) == ["biden.jpg"]
    by_words = await search(indexed, text="suit", filters=search_pb2.SearchFilters(
        person_ids=[person, biden]))
    assert set(ids(by_words)) <= {"obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg"}
    assert ids(await search(indexed, filters=search_pb2.SearchFilters(
        person_ids=["p-nobody"]))) == []


def jpeg(name: str, quality: int, scale: float = 1.0) -> bytes:
    image = decode(name)
    if scale != 1.0:
        height, width = image.shape[:2]
        image = cv2.resize(image, (round(width * scale), round(height * scale)),
                           interpolation=cv2.INTER_AREA)
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return bytes(buffer.tobytes())


async def test_duplicates_are_recognised_at_ingest_and_still_stored(
    indexed: grpc.aio.Channel,
) -> None:
    ingest = ing_grpc.IngestServiceStub(indexed)
    for name in PHOTOS:  # distinct photos, also those of one scene, are no duplicates
        stored = (await ingest.GetImage(ing_pb2.GetImageRequest(id=name))).image
        assert stored.duplicate_of == "", name
    copy = (await ingest.IngestImage(ing_pb2.IngestImageRequest(
        options=ingest_pb2.IngestOptions(id="dup-bytes"),
        image=image_pb2.Image(content=photo("coffee.png"))), timeout=60)).image
    assert copy.duplicate_of == "coffee.png"
    uploads = [(upload_pb2.UploadHeader(request_id=image_id, size_bytes=len(content),
                                        ingest=ingest_pb2.IngestOptions(id=image_id)), content)
               for image_id, content in (("dup-q50", jpeg("obama2.jpg", 50)),
                                         ("dup-half", jpeg("sample5.jpg", 90, 0.5)))]
    streamed = {r.request_id: r async for r in ingest.StreamIngestImages(
        upload_messages(ing_pb2.StreamIngestImagesRequest, uploads), timeout=120)}
    assert streamed["dup-q50"].image.duplicate_of == "obama2.jpg"
    assert streamed["dup-half"].image.duplicate_of == "sample5.jpg"
    got = (await ingest.GetImage(ing_pb2.GetImageRequest(id="dup-half"))).image
    assert got.duplicate_of == "sample5.jpg" and len(got.faces) >= 2
    for image_id in ("dup-bytes", "dup-q50", "dup-half"):
        await ingest.DeleteImage(ing_pb2.DeleteImageRequest(id=image_id))
