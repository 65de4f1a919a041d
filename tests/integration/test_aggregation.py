"""Request aggregation through the real server and Triton: concurrent calls travel as fewer,
larger Triton requests, and each caller still gets its own image's answer and its own status."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest_asyncio
from tritonclient.grpc.aio import InferenceServerClient

from server.app import RunningServer, create_server
from server.settings import AggregationSettings, DetectionSettings
from tests.images import PHOTOS, decode, photo
from tests.integration.bad_inputs import CORRUPT_PNG
from tests.integration.conftest import settings_for
from vision.v1 import detection_pb2, model_pb2
from vision_client import VisionClient, VisionError

HEADER_DETECTOR = "header_detector"  # tests/model_repository: answers from the header alone


@pytest_asyncio.fixture(loop_scope="session")
async def aggregating(triton_url: str) -> AsyncIterator[RunningServer]:
    settings = settings_for(triton_url).model_copy(update={
        "aggregation": AggregationSettings(enabled=True, max_batches_in_flight=1),
        "detection": DetectionSettings(models=[HEADER_DETECTOR])})
    running = await create_server(settings)
    yield running
    await running.stop(grace_s=1.0)


async def _requests_and_images(url: str, model: str) -> tuple[int, int]:
    async with InferenceServerClient(url) as triton:
        stats = await triton.get_inference_statistics(model_name=model, as_json=True)
    (entry,) = stats["model_stats"]
    success = entry.get("inference_stats", {}).get("success", {})
    return int(success.get("count", 0)), int(entry.get("inference_count", 0))


def _options(model: str) -> detection_pb2.DetectionOptions:
    return detection_pb2.DetectionOptions(model=model_pb2.ModelReference(name=model))


async def test_each_caller_gets_its_own_image(aggregating: RunningServer,
                                              triton_url: str) -> None:
    names = sorted(p.name for p in PHOTOS.iterdir())
    before = await _requests_and_images(triton_url, HEADER_DETECTOR)
    async with VisionClient(f"127.0.0.1:{aggregating.port}") as client:
        answers = await asyncio.gather(*(
            client.detect(photo(names[i % len(names)]), _options(HEADER_DETECTOR))
            for i in range(96)))
    requests, images = (a - b for a, b in zip(
        await _requests_and_images(triton_url, HEADER_DETECTOR), before, strict=True))
    for i, answer in enumerate(answers):
        height, width = decode(names[i % len(names)]).shape[:2]
        assert (answer.image_size.width, answer.image_size.height) == (width, height)
        assert [(d.label, d.box.x_max, d.box.y_max) for d in answer.detections] == [
            ("person", width, height)]
    assert images == 96
    assert requests < images, "the calls were not aggregated"


async def test_an_undecodable_image_fails_alone(aggregating: RunningServer) -> None:
    good = [photo("chelsea.png"), photo("coffee.png"), photo("astronaut.png")] * 2
    async with VisionClient(f"127.0.0.1:{aggregating.port}") as client:
        yolox = _options("yolox_nano")
        results = await asyncio.gather(
            *(client.detect(image, yolox) for image in good[:3]),
            client.detect(CORRUPT_PNG, yolox),
            *(client.detect(image, yolox) for image in good[3:]),
            return_exceptions=True)
    failed = results[3]
    assert isinstance(failed, VisionError)
    assert failed.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert failed.status.reason == "IMAGE_DECODE_FAILED"
    labels = [r.detections[0].label for r in results if not isinstance(r, BaseException)]
    assert labels == ["cat", "cup", "person"] * 2
