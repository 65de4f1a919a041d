"""Overload, hostile input and faults through real servers of their own (small limits) and the
real Triton: admission with per-peer shares, health never shed, deadlines too short, malformed
request bytes, the scan-bomb JPEG in the decode step, stream idle timeout and protocol-error cap,
the circuit breaker against a dead Triton and a hung one (SIGSTOP), and the drain on shutdown."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
import pytest_asyncio
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.app import RunningServer, create_server
from server.domain import DetectOptions, InvalidArgumentError, ModelRef
from server.settings import (
    AdmissionSettings,
    BreakerSettings,
    LimitsSettings,
    Settings,
    TritonSettings,
)
from server.triton.breaker import BreakerState
from server.triton.detection import TritonDetector
from tests.images import photo, scan_bomb
from tests.integration.conftest import ROOT, free_port, settings_for
from tests.integration.status_details import reason, status_of, violations
from tools.local_triton import LocalTriton, start_triton
from vision.v1 import detection_pb2, image_pb2, model_pb2, upload_pb2
from vision.v1 import detection_service_pb2 as det_pb2
from vision.v1 import detection_service_pb2_grpc as det_grpc

PNG = photo("chelsea.png")
DETECT = "/vision.v1.DetectionService/DetectObjects"


def detect_request(content: bytes = PNG) -> det_pb2.DetectObjectsRequest:
    return det_pb2.DetectObjectsRequest(image=image_pb2.Image(content=content))


def retry_delay(error: grpc.aio.AioRpcError) -> duration_pb2.Duration | None:
    for detail in status_of(error).details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            delay: duration_pb2.Duration = info.retry_delay
            return delay
    return None


@pytest_asyncio.fixture(loop_scope="session")
async def small_server(triton_url: str) -> AsyncIterator[RunningServer]:
    """Two slots for calls and two for streams, one of each per peer (connection), no waiting;
    2 s minimum deadline; streams idle out after 0.5 s and end after 3 failed uploads."""
    settings = settings_for(triton_url).model_copy(update={
        "admission": AdmissionSettings(max_in_flight=2, max_streams=2, max_waiting=0,
                                       peer_share=0.5, min_deadline_s=2.0, retry_after_s=0.25),
        "limits": LimitsSettings(stream_idle_timeout_s=0.5, max_stream_protocol_errors=3),
    })
    running = await create_server(settings)
    await running.health_watcher.checked.wait()
    yield running
    await running.stop(grace_s=1.0)


@pytest.fixture
def channels(small_server: RunningServer) -> Iterator[tuple[grpc.aio.Channel, grpc.aio.Channel]]:
    target = f"127.0.0.1:{small_server.port}"
    # Two connections = two peers (a local subchannel pool per channel keeps them apart).
    options = [("grpc.use_local_subchannel_pool", 1)]
    yield (grpc.aio.insecure_channel(target, options=options),
           grpc.aio.insecure_channel(target, options=options))


def header(request_id: str, size: int) -> det_pb2.StreamDetectObjectsRequest:
    return det_pb2.StreamDetectObjectsRequest(
        header=upload_pb2.UploadHeader(request_id=request_id, size_bytes=size))


END = det_pb2.StreamDetectObjectsRequest(end=upload_pb2.UploadEnd())


async def test_the_excess_is_shed_per_peer_and_health_is_never_shed(
    small_server: RunningServer, channels: tuple[grpc.aio.Channel, grpc.aio.Channel]
) -> None:
    heavy, light = (det_grpc.DetectionServiceStub(c) for c in channels)
    slow = detect_request(scan_bomb(6000, 6000, 17))  # within budget; ~1 s of decoding

    async def outcome(stub: det_grpc.DetectionServiceAsyncStub,
                      request: det_pb2.DetectObjectsRequest) -> str:
        try:
            await stub.DetectObjects(request, timeout=30)
            return "OK"
        except grpc.aio.AioRpcError as error:
            assert retry_delay(error) == duration_pb2.Duration(nanos=250_000_000)
            return f"{error.code().name} {reason(status_of(error))}"

    # Two slots, one per peer: of the heavy peer's two calls one is shed, the light peer's
    # call is served beside the other.
    heavy_one, heavy_two, light_one = await asyncio.gather(
        outcome(heavy, slow), outcome(heavy, slow), outcome(light, detect_request()))
    assert sorted([heavy_one, heavy_two]) == ["OK", "RESOURCE_EXHAUSTED OVERLOADED"]
    assert light_one == "OK"
    assert small_server.admission.in_flight == 0


async def test_streams_are_admitted_apart_and_health_is_never_shed(
    small_server: RunningServer, channels: tuple[grpc.aio.Channel, grpc.aio.Channel]
) -> None:
    heavy = det_grpc.DetectionServiceStub(channels[0])
    held = asyncio.Event()

    async def hold() -> AsyncIterator[det_pb2.StreamDetectObjectsRequest]:
        yield header("held", 10)
        await held.wait()  # the stream, and its admission slot, stay open meanwhile
        yield det_pb2.StreamDetectObjectsRequest(chunk=upload_pb2.ImageChunk(data=b"x" * 10))
        yield END

    stream = heavy.StreamDetectObjects(hold(), timeout=30)
    await stream.wait_for_connection()
    await small_server.in_flight.wait_for(lambda count: count >= 1)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in heavy.StreamDetectObjects(iter([END]), timeout=30):
            pass
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert reason(status_of(caught.value)) == "OVERLOADED"
    # Unary calls have slots of their own; health is never shed.
    answer = await heavy.DetectObjects(detect_request(), timeout=30)
    assert answer.detections[0].label == "cat"
    health = health_pb2_grpc.HealthStub(channels[0])
    checked = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert checked.status == health_pb2.HealthCheckResponse.SERVING
    held.set()
    responses = [response async for response in stream]
    assert [r.request_id for r in responses] == ["held"]
    assert reason(responses[0].status) == "INVALID_IMAGE"  # ten x's: refused by the header check
    assert small_server.stream_admission.in_flight == 0
    for channel in channels:
        await channel.close()


async def test_a_deadline_too_short_is_refused_before_any_work(
    small_server: RunningServer, channels: tuple[grpc.aio.Channel, grpc.aio.Channel]
) -> None:
    stub = det_grpc.DetectionServiceStub(channels[0])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.DetectObjects(detect_request(), timeout=1.0)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert reason(status_of(caught.value)) == "DEADLINE_TOO_SHORT"
    for channel in channels:
        await channel.close()


async def test_an_idle_stream_ends_with_deadline_exceeded(
    small_server: RunningServer, channels: tuple[grpc.aio.Channel, grpc.aio.Channel]
) -> None:
    stub = det_grpc.DetectionServiceStub(channels[0])
    stop = asyncio.Event()

    async def silent() -> AsyncIterator[det_pb2.StreamDetectObjectsRequest]:
        yield header("quiet", 100)
        await stop.wait()

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in stub.StreamDetectObjects(silent(), timeout=30):
            pass
    stop.set()
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert reason(status_of(caught.value)) == "STREAM_IDLE"
    assert small_server.resources.upload_budget.used == 0
    for channel in channels:
        await channel.close()


async def test_endless_bare_end_markers_end_the_stream(
    small_server: RunningServer, channels: tuple[grpc.aio.Channel, grpc.aio.Channel]
) -> None:
    stub = det_grpc.DetectionServiceStub(channels[0])

    ended = asyncio.Event()

    async def ends() -> AsyncIterator[det_pb2.StreamDetectObjectsRequest]:
        for _ in range(3):  # the cap; more could race the server's end of the call
            yield END
        await ended.wait()  # the stream stays open: the server ends it

    seen = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for response in stub.StreamDetectObjects(ends(), timeout=30):
            seen.append((reason(response.status), violations(response.status)))
    ended.set()
    assert seen == [("UPLOAD_PROTOCOL", ["end"])] * 3
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason(status_of(caught.value)) == "TOO_MANY_PROTOCOL_ERRORS"
    for channel in channels:
        await channel.close()


def _with_invalid_utf8(request: det_pb2.DetectObjectsRequest, marker: str) -> bytes:
    data = request.SerializeToString()
    assert data.count(marker.encode()) == 1
    return data.replace(marker.encode(), b"\xff\xfe" + marker.encode()[2:])


async def test_malformed_request_bytes_are_invalid_argument(target: str) -> None:
    bad = _with_invalid_utf8(det_pb2.DetectObjectsRequest(
        image=image_pb2.Image(content=PNG),
        options=detection_pb2.DetectionOptions(model=model_pb2.ModelReference(name="MODELNAME"))),
        "MODELNAME")
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(DETECT, request_serializer=lambda raw: raw,
                                   response_deserializer=det_pb2.DetectObjectsResponse.FromString)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(bad, timeout=10)
        stream = channel.stream_stream(
            "/vision.v1.DetectionService/StreamDetectObjects", request_serializer=lambda raw: raw,
            response_deserializer=det_pb2.StreamDetectObjectsResponse.FromString)
        raw_header = header("REQUESTID", 10).SerializeToString().replace(b"RE", b"\xff\xfe")
        with pytest.raises(grpc.aio.AioRpcError) as streamed:
            async for _ in stream(iter([raw_header]), timeout=10):
                pass
    for error in (caught.value, streamed.value):
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert reason(status_of(error)) == "MALFORMED_REQUEST"
        assert error.details() == "the request message could not be parsed"


async def test_an_image_of_exactly_4_mib_fits_a_unary_call(
    stub: det_grpc.DetectionServiceAsyncStub
) -> None:
    content = b"GET / " + bytes((4 << 20) - 6)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.DetectObjects(detect_request(content), timeout=30)
    # Through gRPC's message limit to the header check, which finds no image signature.
    assert reason(status_of(caught.value)) == "INVALID_IMAGE"


async def test_the_scan_bomb_is_refused_by_the_server_and_by_the_decode_step(
    stub: det_grpc.DetectionServiceAsyncStub, server: RunningServer
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.DetectObjects(detect_request(scan_bomb()), timeout=30)
    assert reason(status_of(caught.value)) == "IMAGE_TOO_COMPLEX"
    assert violations(status_of(caught.value)) == ["image.content"]
    # Straight to Triton, past the server's header check: the decode step refuses it too.
    detector = TritonDetector(server.resources.triton)
    options = DetectOptions(ModelRef("yolox_nano"), 0.25, 0.45, frozenset(), 100)
    with pytest.raises(InvalidArgumentError) as refused:
        await detector.detect(scan_bomb(), options, "bomb", 30.0)
    assert refused.value.reason == "IMAGE_TOO_COMPLEX"


async def test_the_breaker_opens_against_a_dead_triton_and_health_says_not_serving() -> None:
    settings = Settings(port=0, triton=TritonSettings(url=f"127.0.0.1:{free_port()}",
                                                      health_poll_interval_s=0.2),
                        breaker=BreakerSettings(failure_threshold=2, reset_after_s=30.0))
    running = await create_server(settings)
    try:
        await running.health_watcher.checked.wait()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = det_grpc.DetectionServiceStub(channel)
            codes = []
            for _ in range(3):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.DetectObjects(detect_request(), timeout=10)
                codes.append((caught.value.code(), reason(status_of(caught.value))))
            assert codes == [(grpc.StatusCode.UNAVAILABLE, "BACKEND_UNAVAILABLE")] * 3
            assert running.resources.triton.breaker.state is BreakerState.OPEN
            delay = retry_delay(caught.value)
            assert delay is not None and 25 <= delay.seconds <= 30  # the breaker's, not 1 s
            health = health_pb2_grpc.HealthStub(channel)
            checked = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            assert checked.status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        await running.stop(grace_s=0.5)


async def test_drain_flips_health_first_and_still_serves_meanwhile(triton_url: str) -> None:
    running = await create_server(settings_for(triton_url))
    await running.health_watcher.checked.wait()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
        statuses: list[Any] = [(await watch.read()).status]
        stopping = asyncio.create_task(running.stop(grace_s=5.0, drain_delay_s=3.0))
        statuses.append((await watch.read()).status)
        answer = await det_grpc.DetectionServiceStub(channel).DetectObjects(
            detect_request(), timeout=30)  # still served during the drain delay
        assert answer.detections[0].label == "cat"
        assert not stopping.done()
        watch.cancel()
        await stopping
    assert statuses == [health_pb2.HealthCheckResponse.SERVING,
                        health_pb2.HealthCheckResponse.NOT_SERVING]


@pytest.fixture(scope="module")
def own_triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalTriton]:
    """A Triton of this module's own, serving detection only, for the test that stops it."""
    repository = tmp_path_factory.mktemp("models")
    for name in ("yolox_nano", "yolox_preprocess", "yolox_nano_onnx", "yolox_postprocess"):
        shutil.copytree(ROOT / "model_repository" / name, repository / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.onnx"))
    for onnx in (ROOT / "model_repository").glob("yolox_*/*/*.onnx"):
        (repository / onnx.relative_to(ROOT / "model_repository")).symlink_to(onnx.resolve())
    triton = start_triton(http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                          log_path=repository / "triton.log", model_repository=repository)
    yield triton
    triton.stop(grace=5)


async def test_a_hung_triton_fails_new_calls_fast_and_waiting_ones_keep_their_deadline(
        own_triton: LocalTriton) -> None:
    settings = settings_for(own_triton.grpc_url).model_copy(
        update={"breaker": BreakerSettings(failure_threshold=5, reset_after_s=1.0)})
    running = await create_server(settings)
    breaker = running.resources.triton.breaker
    try:
        await running.health_watcher.checked.wait()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = det_grpc.DetectionServiceStub(channel)
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service="vision.v1.DetectionService"))

            async def until(status: int) -> None:
                while (await watch.read()).status != status:
                    pass

            await stub.DetectObjects(detect_request(), timeout=60)
            os.kill(own_triton.pid, signal.SIGSTOP)  # hung: connected, never answering
            try:
                started = time.monotonic()
                waiting = asyncio.ensure_future(stub.DetectObjects(detect_request(), timeout=4))
                async with asyncio.timeout(10):  # the readiness check times out after 0.5 s
                    await until(health_pb2.HealthCheckResponse.NOT_SERVING)
                assert breaker.held
                asked = time.monotonic()
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stub.DetectObjects(detect_request(), timeout=30)
                assert time.monotonic() - asked < 0.5
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
                assert reason(status_of(refused.value)) == "BACKEND_UNAVAILABLE"
                assert retry_delay(refused.value) is not None
                with pytest.raises(grpc.aio.AioRpcError) as expired:
                    await waiting  # sent before the server knew: it keeps its whole deadline
                assert expired.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                assert time.monotonic() - started >= 3.9
            finally:
                os.kill(own_triton.pid, signal.SIGCONT)
            async with asyncio.timeout(30):  # recovery: the next check Triton answers
                await until(health_pb2.HealthCheckResponse.SERVING)
            watch.cancel()
            assert not breaker.held
            answer = await stub.DetectObjects(detect_request(), timeout=60)
            assert answer.detections[0].label == "cat"
    finally:
        await running.stop(grace_s=0.5)
