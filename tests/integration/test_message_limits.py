"""The real size limits a caller meets, as the README states them: the server's receive limit
(4 MiB + 64 KiB, connection.max_receive_message_bytes) counts the whole serialized message, so a
unary image of 4 MiB fits with room for options, a message past the limit is refused by gRPC
without details, and one stream message over the limit ends the whole stream."""

from __future__ import annotations

import grpc
import pytest
from grpc_status import rpc_status

from tests.integration.status_details import reason, status_of
from vision.v1 import detection_service_pb2 as det_pb2
from vision.v1 import detection_service_pb2_grpc as det_grpc
from vision.v1 import image_pb2, upload_pb2

LIMIT = (4 << 20) + (64 << 10)
FRAMING = 10  # field tags and lengths around Image.content in DetectObjectsRequest


def unary(size: int) -> det_pb2.DetectObjectsRequest:
    return det_pb2.DetectObjectsRequest(image=image_pb2.Image(content=b"\x00" * size))


async def test_largest_unary_image_reaches_the_server(
    stub: det_grpc.DetectionServiceAsyncStub
) -> None:
    request = unary(LIMIT - FRAMING)
    assert request.ByteSize() == LIMIT
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.DetectObjects(request)
    # Past the message limit: the server itself looked at the bytes and found no image.
    assert reason(status_of(caught.value)) == "INVALID_IMAGE"


async def test_one_byte_more_is_refused_without_details(
    stub: det_grpc.DetectionServiceAsyncStub
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.DetectObjects(unary(LIMIT - FRAMING + 1))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert rpc_status.from_call(caught.value) is None  # no google.rpc.Status: gRPC refused it


async def test_an_oversize_chunk_ends_the_stream(
    stub: det_grpc.DetectionServiceAsyncStub
) -> None:
    messages = [
        det_pb2.StreamDetectObjectsRequest(header=upload_pb2.UploadHeader(
            request_id="big", size_bytes=LIMIT)),
        det_pb2.StreamDetectObjectsRequest(chunk=upload_pb2.ImageChunk(data=b"\x00" * LIMIT)),
    ]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in stub.StreamDetectObjects(iter(messages)):
            pass
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
