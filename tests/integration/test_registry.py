"""What the service registry derives: start-up checks of every configured model's tensors
against its adapter, per-service health over every configured model, and request ids."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.app import ModelContractError, create_server
from server.settings import DetectionSettings
from tests.images import photo
from tests.integration.conftest import settings_for
from tests.integration.status_details import reason, status_of, violations
from vision.v1 import detection_service_pb2 as det_pb2
from vision.v1 import detection_service_pb2_grpc as det_grpc
from vision.v1 import image_pb2

DETECT = det_pb2.DetectObjectsRequest(image=image_pb2.Image(content=photo("chelsea.png")))


async def test_a_model_whose_tensors_differ_from_its_adapter_stops_start_up(
    triton_url: str,
) -> None:
    # mobilenet_v2 is a real, ready Triton model, but not a detector: its inputs and outputs
    # are not the detection adapter's.
    settings = settings_for(triton_url)
    settings.detection = DetectionSettings(models=["mobilenet_v2"])
    with pytest.raises(ModelContractError) as caught:
        await create_server(settings)
    message = str(caught.value)
    assert "'mobilenet_v2'" in message
    assert "input 'SCORE_THRESHOLD' is missing" in message
    assert "output 'BOXES' is missing" in message
    assert "yolox_nano" not in message


async def test_health_is_not_serving_while_any_configured_model_is_missing(
    triton_url: str,
) -> None:
    settings = settings_for(triton_url)
    settings.detection = DetectionSettings(models=["yolox_nano", "no_such_detector"])
    running = await create_server(settings)
    try:
        await running.health_watcher.checked.wait()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", "vision.v1.DetectionService"):
                answer = await health.Check(health_pb2.HealthCheckRequest(service=service))
                assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING, service
            # the default detector itself still answers
            response = await det_grpc.DetectionServiceStub(channel).DetectObjects(
                DETECT, timeout=30)
            assert response.detections[0].label == "cat"
    finally:
        await running.stop(grace_s=1)


async def test_request_id_is_returned_and_a_malformed_one_is_refused(
    stub: det_grpc.DetectionServiceAsyncStub,
) -> None:
    call = stub.DetectObjects(DETECT, metadata=(("x-request-id", "abc-123"),), timeout=30)
    await call
    assert ("x-request-id", "abc-123") in tuple(await call.trailing_metadata())
    made_up = stub.DetectObjects(DETECT, timeout=30)
    await made_up
    ids = [value for key, value in await made_up.trailing_metadata() if key == "x-request-id"]
    assert len(ids) == 1 and len(str(ids[0])) == 32
    failed = stub.DetectObjects(det_pb2.DetectObjectsRequest(), timeout=30,
                                metadata=(("x-request-id", "failing-call"),))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await failed
    assert ("x-request-id", "failing-call") in tuple(refused.value.trailing_metadata())
    stream = stub.StreamDetectObjects(iter(()), metadata=(("x-request-id", "a-stream"),),
                                      timeout=30)
    assert ("x-request-id", "a-stream") in tuple(await stream.initial_metadata())
    assert [r async for r in stream] == []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.DetectObjects(DETECT, metadata=(("x-request-id", "has space"),), timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = status_of(caught.value)
    assert (reason(status), violations(status)) == (
        "INVALID_REQUEST_ID", ["metadata.x-request-id"])
