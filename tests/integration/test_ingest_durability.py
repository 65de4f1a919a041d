"""Durability of ingest: a server in a subprocess is SIGKILLed in the middle of an ingest stream;
a new server on the same store finds every image whose ingest had been acknowledged, whole, and
no partial one."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tempfile

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.images import photo
from tests.integration.conftest import ROOT, STORES, free_port
from vision.v1 import ingest_pb2, upload_pb2
from vision.v1 import ingest_service_pb2 as ing_pb2
from vision.v1 import ingest_service_pb2_grpc as ing_grpc
from vision_client import upload_messages

PHOTOS = ["obama.jpg", "chelsea.png", "sample1.jpg", "coffee.png", "astronaut.png"] * 6
FACES = {"obama.jpg": 1, "chelsea.png": 0, "sample1.jpg": 3, "coffee.png": 0,
         "astronaut.png": 1}


async def start_server(triton_url: str, store: str) -> tuple[asyncio.subprocess.Process, str]:
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server", f"--port={port}", f"--triton.url={triton_url}",
        f"--store.path={store}", "--log-level=WARNING", cwd=ROOT,
        stdin=asyncio.subprocess.DEVNULL)
    target = f"127.0.0.1:{port}"
    async with grpc.aio.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        answer = await health.Check(health_pb2.HealthCheckRequest(), wait_for_ready=True,
                                    timeout=120)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
    return process, target


async def test_acknowledged_ingests_survive_sigkill(triton_url: str) -> None:
    store = tempfile.mkdtemp(prefix="store-kill-", dir=STORES)
    process, target = await start_server(triton_url, store)
    acknowledged: dict[str, str] = {}
    messages = upload_messages(ing_pb2.StreamIngestImagesRequest, (
        (upload_pb2.UploadHeader(request_id=f"img-{i}", size_bytes=len(photo(name)),
                                 ingest=ingest_pb2.IngestOptions(id=f"img-{i}",
                                                                 metadata={"photo": name})),
         photo(name)) for i, name in enumerate(PHOTOS)))
    try:
        async with grpc.aio.insecure_channel(target) as channel:
            call = ing_grpc.IngestServiceStub(channel).StreamIngestImages(messages, timeout=300)
            with_errors = False
            try:
                async for result in call:
                    assert result.status.code == 0, result.status
                    acknowledged[result.request_id] = result.image.metadata["photo"]
                    if len(acknowledged) == 8:
                        os.kill(process.pid, signal.SIGKILL)
            except grpc.aio.AioRpcError:
                with_errors = True
            assert with_errors, "the stream should have been cut by the kill"
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
    assert 8 <= len(acknowledged) < len(PHOTOS)

    process, target = await start_server(triton_url, store)
    try:
        async with grpc.aio.insecure_channel(target) as channel:
            ingest = ing_grpc.IngestServiceStub(channel)
            for i, name in enumerate(PHOTOS):
                image_id = f"img-{i}"
                try:
                    got = (await ingest.GetImage(ing_pb2.GetImageRequest(id=image_id))).image
                except grpc.aio.AioRpcError as err:
                    assert err.code() == grpc.StatusCode.NOT_FOUND
                    assert image_id not in acknowledged, f"{image_id} was acknowledged"
                    continue
                # Present means whole: every index's part of the record is there.
                assert got.metadata["photo"] == name
                assert len(got.faces) == FACES[name], image_id
                assert got.labels and got.image_size.width > 0
    finally:
        process.send_signal(signal.SIGTERM)
        await process.wait()
