"""The Python SDK against the real server: one stream of 100 images with 16 in flight, a server
restart in the middle of a stream survived without a lost or duplicated result, typed errors with
their decoded details, and the blocking client."""

from __future__ import annotations

import asyncio
from collections import Counter

import grpc
import pytest

from server.app import create_server
from server.settings import Settings
from tests.images import photo
from tests.integration.conftest import free_port, settings_for
from vision.v1 import detection_pb2, model_pb2
from vision.v1 import detection_service_pb2 as det_pb2
from vision_client import (
    InvalidArgumentError,
    NotFoundError,
    StreamImage,
    SyncVisionClient,
    VisionClient,
)

EXPECTED = {"astronaut.png": "person", "chelsea.png": "cat", "coffee.png": "cup",
            "motorcycle_left.png": "motorcycle"}


def images(count: int) -> list[StreamImage]:
    names = sorted(EXPECTED)
    return [StreamImage(f"{i:03d}-{names[i % len(names)]}", photo(names[i % len(names)]))
            for i in range(count)]


def top_label(response: det_pb2.StreamDetectObjectsResponse) -> str:
    return response.result.detections[0].label


async def test_hundred_images_sixteen_in_flight(client: VisionClient) -> None:
    seen = Counter[str]()
    async for response in client.detect_many(images(100), concurrency=16):
        seen[response.request_id] += 1
        assert response.status.code == 0, response.status
        assert top_label(response) == EXPECTED[response.request_id[4:]]
    assert sorted(seen) == [image.request_id for image in images(100)]
    assert set(seen.values()) == {1}


async def test_server_restart_mid_stream_is_survived(triton_url: str) -> None:
    port = free_port()

    def settings() -> Settings:
        return settings_for(triton_url).model_copy(update={"port": port})

    running = await create_server(settings())
    received: list[str] = []
    received_before_restart = 0
    try:
        async with VisionClient(f"127.0.0.1:{port}") as vision:
            async for response in vision.detect_many(images(40), concurrency=4):
                assert response.status.code == 0, response.status
                assert top_label(response) == EXPECTED[response.request_id[4:]]
                received.append(response.request_id)
                if len(received) == 10:
                    # The stream is cut with images in flight; the client reconnects to the
                    # new server on the same port and sends only what has no result yet.
                    await running.stop(grace_s=0)
                    received_before_restart = len(received)
                    running = await create_server(settings())
    finally:
        await running.stop(grace_s=1.0)
    assert received_before_restart == 10
    assert sorted(received) == [image.request_id for image in images(40)]
    assert len(received) == len(set(received)) == 40


async def test_errors_are_typed_with_their_details(client: VisionClient) -> None:
    with pytest.raises(InvalidArgumentError) as bad:
        await client.detect(b"")
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad.value.reason == "EMPTY_IMAGE"
    assert [v.field for v in bad.value.field_violations] == ["image.content"]
    with pytest.raises(NotFoundError) as missing:
        await client.detect(photo("chelsea.png"), detection_pb2.DetectionOptions(
            model=model_pb2.ModelReference(name="no_such_model")))
    assert missing.value.reason == "MODEL_NOT_FOUND"
    assert missing.value.status.resource_name == "no_such_model"


async def test_blocking_client(target: str) -> None:
    def run() -> list[str]:
        with SyncVisionClient(target) as blocking:
            one = blocking.detect(photo("chelsea.png"))
            many = blocking.detect_many(images(3))
        return [one.detections[0].label, *sorted(r.request_id for r in many)]

    # In a thread: the blocking client runs its own loop, and the server needs this one.
    assert await asyncio.to_thread(run) == [
        "cat", "000-astronaut.png", "001-chelsea.png", "002-coffee.png"]
