"""Walks the bad-input corpus (tests/integration/bad_inputs.py): every case gets its exact code,
reason and fields, and the server still serves a good request afterwards."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from google.rpc import status_pb2

from tests.images import photo
from tests.integration.bad_inputs import (
    CASES,
    DETECT,
    STREAM_ANALYZE,
    STREAM_DETECT,
    Case,
    Expected,
)
from tests.integration.status_details import reason, status_of, violations
from vision.v1 import analysis_service_pb2 as an_pb2
from vision.v1 import detection_service_pb2 as det_pb2
from vision.v1 import image_pb2

_STREAM_RESPONSES: dict[str, type[det_pb2.StreamDetectObjectsResponse]
                        | type[an_pb2.StreamAnalyzeImagesResponse]] = {
    STREAM_DETECT: det_pb2.StreamDetectObjectsResponse,
    STREAM_ANALYZE: an_pb2.StreamAnalyzeImagesResponse,
}


def _identity(raw: bytes) -> bytes:
    return raw


async def _observe(channel: grpc.aio.Channel, case: Case) -> Expected:
    if not case.streaming:
        call = channel.unary_unary(case.method, request_serializer=_identity,
                                   response_deserializer=_identity)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(case.messages[0], timeout=60, metadata=case.metadata)
        return _expected(caught.value.code(), status_of(caught.value))
    stream = channel.stream_stream(case.method, request_serializer=_identity,
                                   response_deserializer=_identity)
    failed: list[status_pb2.Status] = []
    ended = asyncio.Event()

    async def messages() -> AsyncIterator[bytes]:
        for message in case.messages:
            yield message
        if case.whole_call:  # keep our side open: the server must end the call itself
            await ended.wait()

    try:
        async for raw in stream(messages(), timeout=60):
            response = _STREAM_RESPONSES[case.method].FromString(raw)
            if response.status.code:
                failed.append(response.status)
    except grpc.aio.AioRpcError as error:
        ended.set()
        assert case.whole_call, (error.code(), error.details())
        return _expected(error.code(), status_of(error))
    assert not case.whole_call and failed, "the stream ended without a failed item"
    return _expected(grpc.StatusCode(next(c for c in grpc.StatusCode
                                          if c.value[0] == failed[0].code)), failed[0])


def _expected(code: grpc.StatusCode, status: status_pb2.Status) -> Expected:
    return Expected(code, reason(status), tuple(violations(status)))


def test_the_corpus_is_large_and_names_unique() -> None:
    assert len(CASES) >= 40
    assert len({case.name for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
async def test_bad_input_gets_its_exact_status(target: str, case: Case) -> None:
    async with grpc.aio.insecure_channel(
            target, options=[("grpc.max_send_message_length", 8 << 20)]) as channel:
        assert await _observe(channel, case) == case.expected
        detect = channel.unary_unary(DETECT, request_serializer=_identity,
                                     response_deserializer=det_pb2.DetectObjectsResponse.FromString)
        good = det_pb2.DetectObjectsRequest(image=image_pb2.Image(
            content=photo("chelsea.png"))).SerializeToString()
        answer = await detect(good, timeout=60)
        assert answer.detections[0].label == "cat"
