"""StreamDetect through the real server and Triton: chunked large images, several images per
stream with per-image statuses, and upload mistakes that fail one image only."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from google.rpc import code_pb2

from tests.images import corrupt_png, large_png, photo
from tests.integration.status_details import reason, violations
from vision.v1 import detection_pb2, image_pb2, upload_pb2
from vision.v1 import detection_service_pb2 as det_pb2
from vision.v1 import detection_service_pb2_grpc as det_grpc
from vision_client import StreamImage, VisionClient, detection_uploads


async def collect(client: VisionClient, images: list[StreamImage],
                  chunk_bytes: int = 256 << 10) -> dict[str, det_pb2.StreamDetectObjectsResponse]:
    results: dict[str, det_pb2.StreamDetectObjectsResponse] = {}
    async for response in client.stream_detect(images, chunk_bytes):
        assert response.request_id not in results
        results[response.request_id] = response
    return results


async def test_large_image_through_chunks(client: VisionClient) -> None:
    content = large_png()
    assert len(content) > 6_000_000
    results = await collect(client, [StreamImage("big", content)], chunk_bytes=1 << 20)
    result = results["big"]
    assert result.status.code == code_pb2.OK, result.status
    assert result.result.detections[0].label == "person"
    assert result.result.detections[0].score >= 0.85
    assert (result.result.image_size.width, result.result.image_size.height) == (2400, 2400)


async def test_large_image_is_refused_by_unary_message_limit(
    stub: det_grpc.DetectionServiceAsyncStub
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.DetectObjects(
            det_pb2.DetectObjectsRequest(image=image_pb2.Image(content=large_png())))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_five_images_one_corrupt(client: VisionClient) -> None:
    good = {"astronaut": "person", "coffee": "cup", "motorcycle_left": "motorcycle",
            "chelsea": "cat"}
    images = [StreamImage(name, photo(f"{name}.png")) for name in good]
    # zeroed IDAT data: header and chunks are fine, decoding is not
    images.insert(2, StreamImage("corrupt", corrupt_png("coffee.png")))
    results = await collect(client, images)
    assert sorted(results) == sorted([*good, "corrupt"])
    for name, label in good.items():
        assert results[name].status.code == code_pb2.OK, results[name].status
        assert results[name].result.detections[0].label == label
    bad = results["corrupt"]
    assert bad.status.code == code_pb2.INVALID_ARGUMENT
    assert not bad.HasField("result")
    assert violations(bad.status) == ["chunk.data"]
    assert reason(bad.status) == "IMAGE_DECODE_FAILED"


async def test_upload_mistakes_fail_only_their_image(
    stub: det_grpc.DetectionServiceAsyncStub
) -> None:
    cat = photo("chelsea.png")
    messages = [
        *detection_uploads([StreamImage("ok-1", cat)]),
        # declares 10 bytes fewer than it sends
        det_pb2.StreamDetectObjectsRequest(header=upload_pb2.UploadHeader(
            request_id="too-long", size_bytes=len(cat) - 10)),
        det_pb2.StreamDetectObjectsRequest(chunk=upload_pb2.ImageChunk(data=cat)),
        det_pb2.StreamDetectObjectsRequest(end=upload_pb2.UploadEnd()),
        # bad options, reported with the stream's field names
        *detection_uploads([StreamImage("bad-iou", cat, detection_pb2.DetectionOptions(
            iou_threshold=3.0))]),
        *detection_uploads([StreamImage("ok-2", cat)]),
        # never sends its end marker: the stream closes first
        det_pb2.StreamDetectObjectsRequest(header=upload_pb2.UploadHeader(
            request_id="no-end", size_bytes=len(cat))),
        det_pb2.StreamDetectObjectsRequest(chunk=upload_pb2.ImageChunk(data=cat)),
    ]
    results = {r.request_id: r async for r in stub.StreamDetectObjects(iter(messages), timeout=60)}
    assert sorted(results) == ["bad-iou", "no-end", "ok-1", "ok-2", "too-long"]
    for ok in ("ok-1", "ok-2"):
        assert results[ok].result.detections[0].label == "cat"
    expected = {"too-long": ["chunk.data"], "bad-iou": ["header.detection.iou_threshold"],
                "no-end": ["end"]}
    for request_id, fields in expected.items():
        status = results[request_id].status
        assert status.code == code_pb2.INVALID_ARGUMENT, request_id
        assert violations(status) == fields, request_id
        assert status.message.startswith(fields[0]), request_id


async def test_stream_deadline_ends_a_stalled_upload(
    stub: det_grpc.DetectionServiceAsyncStub
) -> None:
    async def stalled() -> AsyncIterator[det_pb2.StreamDetectObjectsRequest]:
        yield det_pb2.StreamDetectObjectsRequest(header=upload_pb2.UploadHeader(
            request_id="stalled", size_bytes=100))
        await asyncio.Event().wait()

    call = stub.StreamDetectObjects(stalled(), timeout=1.0)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in call:
            pass
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    after = await stub.DetectObjects(
        det_pb2.DetectObjectsRequest(image=image_pb2.Image(content=photo("chelsea.png"))),
        timeout=30)
    assert after.detections[0].label == "cat"
