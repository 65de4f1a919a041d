"""Metrics, timing trailers and access logs against the real server and Triton: after a known
sequence of calls, /metrics shows each series with the values those calls imply (differences,
since the registry is the process's), Triton's per-model batch sizes add up to the images sent,
and every call's log line carries the request id the caller sent or the server returned."""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from server.access_log import ACCESS_LOGGER, FIELDS_ATTR, JsonFormatter
from server.app import RunningServer, create_server
from server.interceptors.metrics import TIMING_KEY
from server.settings import AuthSettings
from tests.images import photo
from tests.integration.conftest import settings_for
from tools import api_keys
from vision.v1 import detection_service_pb2 as det_pb2
from vision.v1 import detection_service_pb2_grpc as det_grpc
from vision.v1 import image_pb2, ingest_pb2
from vision.v1 import ingest_service_pb2 as ing_pb2
from vision.v1 import ingest_service_pb2_grpc as ing_grpc
from vision.v1 import search_service_pb2 as search_pb2
from vision.v1 import search_service_pb2_grpc as search_grpc

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
DETECTION = "vision.v1.DetectionService"
# What Triton executes for a detection on the CPU configuration: yolox_nano is one fused step.
STEPS = ("yolox_nano",)


@pytest_asyncio.fixture(loop_scope="session")
async def observed(triton_url: str, tmp_path: Path) -> AsyncIterator[tuple[RunningServer, str]]:
    key_file = tmp_path / "keys.toml"
    key = api_keys.add(key_file, "acme", frozenset({"*"}))
    running = await create_server(settings_for(triton_url).model_copy(update={
        "auth": AuthSettings(key_file=key_file), "triton_stats_interval_s": 3600}))
    await running.health_watcher.checked.wait()
    yield running, key
    await running.stop(grace_s=1.0)


async def scrape(port: int) -> Samples:
    def fetch() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            text: str = answer.read().decode()
            return text

    samples: Samples = {}
    for family in text_string_to_metric_families(await asyncio.to_thread(fetch)):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def batch_counts(samples: Samples, model: str) -> dict[int, float]:
    return {int(dict(labels)["batch_size"]): count for (name, labels), count in samples.items()
            if name == "vision_triton_batch_executions_total" and ("model", model) in labels}


def request(name: str) -> det_pb2.DetectObjectsRequest:
    return det_pb2.DetectObjectsRequest(image=image_pb2.Image(content=photo(name)))


async def test_metrics_match_the_calls(observed: tuple[RunningServer, str]) -> None:
    running, key = observed
    port = running.metrics_port
    assert port > 0
    assert running.operations is not None
    poller = running.operations.triton_stats
    await poller.poll_once()
    before = await scrape(port)
    auth = (("x-api-key", key),)
    good = [request(n) for n in ("chelsea.png", "astronaut.png", "coffee.png")]
    burst = [request("chelsea.png") for _ in range(8)]
    empty = det_pb2.DetectObjectsRequest(image=image_pb2.Image(content=b""))

    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        stub = det_grpc.DetectionServiceStub(channel)
        for one in good:
            call = stub.DetectObjects(one, metadata=auth, timeout=60)
            await call
            timing = dict(await call.trailing_metadata() or ())[TIMING_KEY]
            parts = dict(p.strip().split(";dur=") for p in str(timing).split(","))
            assert set(parts) == {"total", "inference"}
            assert 0 < float(parts["inference"]) <= float(parts["total"])
        await asyncio.gather(*(stub.DetectObjects(b, metadata=auth, timeout=60) for b in burst))
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await stub.DetectObjects(empty, metadata=auth, timeout=60)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        for _ in range(2):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.DetectObjects(good[0], timeout=60)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED

    images = len(good) + len(burst)
    async with asyncio.timeout(30):  # a step's statistics may land just after its response
        while True:
            await poller.poll_once()
            after = await scrape(port)
            if all(value(after, "vision_triton_inferences_total", model=m, version="1")
                   - value(before, "vision_triton_inferences_total", model=m, version="1")
                   >= images for m in STEPS):
                break
            await asyncio.sleep(0.05)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    rpc = {"service": DETECTION, "method": "DetectObjects"}
    assert delta("vision_requests_total", **rpc, code="OK") == images
    assert delta("vision_requests_total", **rpc, code="INVALID_ARGUMENT") == 1
    assert delta("vision_requests_total", **rpc, code="UNAUTHENTICATED") == 2
    assert delta("vision_request_duration_seconds_count", **rpc) == images + 3
    assert delta("vision_request_duration_seconds_sum", **rpc) > 0
    # A call refused on its metadata (here by auth) is answered before its message is read
    # (server/interceptors/admission.py), so its bytes were never received and do not count.
    sent = sum(r.ByteSize() for r in good + burst) + empty.ByteSize()
    assert delta("vision_request_bytes_total", **rpc) == sent
    assert value(after, "vision_requests_in_flight", **rpc) == 0
    assert delta("vision_rejections_total", reason="auth_missing_key") == 2
    assert ("vision_triton_breaker_state", frozenset()) in after
    # One Triton call per image alone; the burst's images may share calls (aggregation).
    triton_calls = delta("vision_triton_call_duration_seconds_count", model="yolox_nano")
    assert len(good) + 1 <= triton_calls <= images

    for model in STEPS:
        labels = {"model": model, "version": "1"}
        assert delta("vision_triton_inferences_total", **labels) == images
        sizes = batch_counts(after, model)
        previous = batch_counts(before, model)
        executed = {size: n - previous.get(size, 0) for size, n in sizes.items()}
        assert sum(size * n for size, n in executed.items()) == images, (model, executed)
        assert sum(executed.values()) == delta("vision_triton_executions_total", **labels)
        assert delta("vision_triton_queue_seconds_total", **labels) > 0
        assert delta("vision_triton_compute_infer_seconds_total", **labels) > 0

    # The store's operations, after the figures above (ingest runs every model).
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        await ing_grpc.IngestServiceStub(channel).IngestImage(ing_pb2.IngestImageRequest(
            options=ingest_pb2.IngestOptions(id="cat"),
            image=image_pb2.Image(content=photo("chelsea.png"))), metadata=auth, timeout=300)
        found = await search_grpc.SearchServiceStub(channel).Search(
            search_pb2.SearchRequest(text="cat"), metadata=auth, timeout=60)
        assert [hit.id for hit in found.hits] == ["cat"]
    stored = await scrape(port)
    assert (value(stored, "vision_store_duration_seconds_count", operation="upsert")
            - value(after, "vision_store_duration_seconds_count", operation="upsert")) == 1
    assert (value(stored, "vision_store_duration_seconds_count", operation="search_text")
            > value(after, "vision_store_duration_seconds_count", operation="search_text"))


async def test_every_call_logs_its_request_id(stub: det_grpc.DetectionServiceAsyncStub,
                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    given = ["caller-id-1", "caller-id-2"]
    returned = []
    for request_id in given:
        call = stub.DetectObjects(request("chelsea.png"),
                                  metadata=(("x-request-id", request_id),), timeout=60)
        await call
    for _ in range(2):
        call = stub.DetectObjects(request("coffee.png"), timeout=60)
        await call
        returned.append(dict(await call.trailing_metadata() or ())["x-request-id"])
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.DetectObjects(det_pb2.DetectObjectsRequest(), timeout=60,
                                 metadata=(("x-request-id", "caller-id-bad-input"),))

    lines = [json.loads(JsonFormatter().format(r)) for r in caplog.records
             if r.name == ACCESS_LOGGER]
    assert [line["request_id"] for line in lines] == [*given, *returned, "caller-id-bad-input"]
    assert len(set(returned)) == 2
    assert [line["code"] for line in lines] == ["OK"] * 4 + ["INVALID_ARGUMENT"]
    for line in lines:
        assert line["tenant"] == "default"
        assert (line["service"], line["method"]) == (DETECTION, "DetectObjects")
        assert line["duration_ms"] > 0
    assert lines[0]["request_bytes"] == request("chelsea.png").ByteSize()
    assert all(getattr(r, FIELDS_ATTR)["inference_ms"] > 0 for r in caplog.records[:4]
               if r.name == ACCESS_LOGGER)
