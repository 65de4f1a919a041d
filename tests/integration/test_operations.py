"""Operating the service: reflection and health through the real grpcurl binary, health and
errors while Triton is unreachable, and graceful shutdown that drains in-flight calls."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from server.app import create_server
from server.settings import TritonSettings
from tests.images import photo
from tests.integration.conftest import free_port, settings_for
from tests.integration.status_details import reason, status_of
from vision.v1 import detection_service_pb2 as det_pb2
from vision.v1 import detection_service_pb2_grpc as det_grpc
from vision.v1 import image_pb2
from vision_client import VisionClient

GRPCURL = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")


async def grpcurl(*args: str, stdin: bytes = b"") -> str:
    process = await asyncio.create_subprocess_exec(
        GRPCURL, "-plaintext", *args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(stdin), 60)
    assert process.returncode == 0, err.decode()
    return out.decode()


async def test_grpcurl_lists_services_by_reflection(target: str) -> None:
    services = (await grpcurl(target, "list")).split()
    assert {"vision.v1.DetectionService", "grpc.health.v1.Health"} <= set(services)
    described = await grpcurl(target, "describe", "vision.v1.DetectionService")
    assert ("rpc StreamDetectObjects ( stream .vision.v1.StreamDetectObjectsRequest )"
            in described)


async def test_reflection_answers_under_v1_and_v1alpha(target: str) -> None:
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    async with grpc.aio.insecure_channel(target) as channel:
        for package in ("grpc.reflection.v1", "grpc.reflection.v1alpha"):
            call = channel.stream_stream(
                f"/{package}.ServerReflection/ServerReflectionInfo",
                request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
            responses = [r async for r in call(iter([request]))]
            names = {s.name for s in responses[0].list_services_response.service}
            assert {"vision.v1.DetectionService", "grpc.reflection.v1.ServerReflection",
                    "grpc.reflection.v1alpha.ServerReflection"} <= names, package


async def test_grpcurl_shows_decoded_error_details(target: str) -> None:
    process = await asyncio.create_subprocess_exec(
        GRPCURL, "-plaintext", "-format-error", "-d", '{"image": {"content": ""}}', target,
        "vision.v1.DetectionService/DetectObjects", stdout=subprocess.PIPE,
        stderr=subprocess.PIPE)
    _, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode != 0
    error = json.loads(err)
    assert error["code"] == 3
    kinds = {detail["@type"]: detail for detail in error["details"]}
    assert kinds["type.googleapis.com/google.rpc.ErrorInfo"]["reason"] == "EMPTY_IMAGE"
    assert kinds["type.googleapis.com/google.rpc.BadRequest"]["field_violations"][0][
        "field"] == "image.content"


async def test_grpcurl_health_and_detect(target: str) -> None:
    for service in ("", "vision.v1.DetectionService"):
        answer = json.loads(await grpcurl("-d", json.dumps({"service": service}), target,
                                          "grpc.health.v1.Health/Check"))
        assert answer == {"status": "SERVING"}
    # as the README sends it: snake_case option names, bytes in base64
    body = json.dumps({"image": {"content": base64.b64encode(photo("chelsea.png")).decode()},
                       "options": {"score_threshold": 0.3}})
    answer = json.loads(await grpcurl("-d", "@", target, "vision.v1.DetectionService/DetectObjects",
                                      stdin=body.encode()))
    assert answer["detections"][0]["label"] == "cat"


async def test_triton_unreachable_means_not_serving_and_unavailable() -> None:
    settings = settings_for(f"127.0.0.1:{free_port()}")
    settings.triton = TritonSettings(url=settings.triton.url, health_poll_interval_s=0.2,
                                     timeout_s=2)
    running = await create_server(settings)
    try:
        await running.health_watcher.checked.wait()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", "vision.v1.DetectionService"):
                answer = await health.Check(health_pb2.HealthCheckRequest(service=service))
                assert answer.status == health_pb2.HealthCheckResponse.NOT_SERVING
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                stub = det_grpc.DetectionServiceStub(channel)
                await stub.DetectObjects(det_pb2.DetectObjectsRequest(
                    image=image_pb2.Image(content=photo("chelsea.png"))), timeout=10)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert reason(status_of(caught.value)) == "BACKEND_UNAVAILABLE"
    finally:
        await running.stop(grace_s=0)


async def test_graceful_shutdown_drains_in_flight_calls(triton_url: str) -> None:
    running = await create_server(settings_for(triton_url))
    await running.health_watcher.checked.wait()
    async with VisionClient(f"127.0.0.1:{running.port}") as client:
        calls = [asyncio.create_task(client.detect(photo("astronaut.png"))) for _ in range(8)]
        # Every call has reached the server (some may already be done on a loaded machine).
        await asyncio.wait_for(running.in_flight.wait_for(
            lambda count: running.in_flight.entered >= 8), 60)
        await asyncio.wait_for(running.stop(grace_s=30), 60)
        responses = await asyncio.gather(*calls)
        assert all(r.detections[0].label == "person" for r in responses)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.detect(photo("astronaut.png"))
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize(("taken", "flag"), [("gRPC", "--port"), ("metrics", "--metrics-port")])
def test_a_taken_port_stops_start_up_with_one_line_naming_it(taken: str, flag: str) -> None:
    with socket.socket() as holder:  # another program on the port, listening
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        ports = {"--port": str(free_port()), "--metrics-port": str(free_port()), flag: str(port)}
        result = subprocess.run(
            [sys.executable, "-m", "server", "--host", "127.0.0.1",
             "--triton.url", f"127.0.0.1:{free_port()}", *(a for p in ports.items() for a in p)],
            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    setting = "VISION_PORT" if flag == "--port" else "VISION_METRICS_PORT"
    assert result.stderr.splitlines()[-1] == (
        f"vision-grpc: the {taken} port 127.0.0.1:{port} is taken (another vision-grpc or "
        f"another program listens there); choose another with {flag} or {setting} "
        "(0 picks a free one)")
