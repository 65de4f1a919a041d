"""Integration fixtures: the real local Triton (started once per session from the wheel, on free
ports, unless VISION_TEST_TRITON_URL names one already running) and the real server in-process
on port 0, reached over real gRPC channels."""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from server.app import RunningServer, create_server
from server.settings import AdmissionSettings, Settings, StoreSettings, TritonSettings
from tools.local_triton import start_triton
from vision.v1 import detection_service_pb2_grpc as det_grpc
from vision_client import VisionClient

ROOT = Path(__file__).resolve().parents[2]
# Every test server's embedded store lives under one folder per test session, removed at exit.
(ROOT / "var").mkdir(exist_ok=True)
STORES = Path(tempfile.mkdtemp(prefix="test-stores-", dir=ROOT / "var"))
atexit.register(shutil.rmtree, STORES, True)
# Every server a test starts serves /metrics on a free port, never the fixed 4604.
os.environ.setdefault("VISION_METRICS_PORT", "0")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def triton_url() -> Iterator[str]:
    given = os.environ.get("VISION_TEST_TRITON_URL")
    if given:
        yield given
        return
    triton = start_triton(
        http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
        log_path=ROOT / "var" / "triton-tests.log",
        extra_repositories=[ROOT / "tests" / "model_repository"],
    )
    try:
        yield triton.grpc_url
    finally:
        triton.stop()


def settings_for(triton_url: str) -> Settings:
    """A server's settings for tests: port 0, an embedded store of its own (a store directory
    has one owner), and admission opened wide: the batching tests send 32 calls at once from
    one channel; tests/integration/test_resilience.py checks admission with a server of its
    own."""
    store = tempfile.mkdtemp(prefix="store-", dir=STORES)
    return Settings(port=0, triton=TritonSettings(url=triton_url, health_poll_interval_s=0.5),
                    store=StoreSettings(path=store),
                    admission=AdmissionSettings(max_in_flight=256, peer_share=1.0))


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def server(triton_url: str) -> AsyncIterator[RunningServer]:
    running = await create_server(settings_for(triton_url))
    await running.health_watcher.checked.wait()
    yield running
    await running.stop(grace_s=1.0)


@pytest.fixture(scope="session")
def target(server: RunningServer) -> str:
    return f"127.0.0.1:{server.port}"


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def client(target: str) -> AsyncIterator[VisionClient]:
    async with VisionClient(target, timeout_s=60.0) as vision:
        yield vision


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def stub(target: str) -> AsyncIterator[det_grpc.DetectionServiceAsyncStub]:
    async with grpc.aio.insecure_channel(target) as channel:
        yield det_grpc.DetectionServiceStub(channel)
