"""Several server processes on one port (`python -m server --workers 2`, server/supervisor.py)
against the real Triton, each test with a supervisor of its own as a subprocess: calls over many
connections spread over both workers and /metrics adds them up; a SIGKILLed worker is restarted
while the other worker's calls go on and health stays SERVING; SIGTERM drains (NOT_SERVING
before the port closes) and leaves nothing running; workers that fail at start make the
supervisor exit non-zero.

Which worker served a call is read from the JSON access log, whose lines name the worker's pid
and carry the request id the caller sent.

Both workers of a supervisor share one embedded store directory, as `make run --workers 2`
would (the store lets several processes open one directory).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from server.app import server_options
from server.settings import ConnectionSettings
from tests.images import photo
from tests.integration.conftest import ROOT
from vision.v1 import detection_service_pb2 as det_pb2
from vision.v1 import detection_service_pb2_grpc as det_grpc
from vision.v1 import image_pb2, ingest_pb2, ingest_service_pb2, search_service_pb2
from vision.v1 import ingest_service_pb2_grpc as ingest_grpc
from vision.v1 import search_service_pb2_grpc as search_grpc

DETECTION = "vision.v1.DetectionService"
# Each channel its own connection, as separate clients have; the kernel picks a worker per
# connection, so many connections reach both workers.
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]
CHANNELS = 16
START_TIMEOUT_S = 120.0
REQUEST = det_pb2.DetectObjectsRequest(image=image_pb2.Image(content=photo("chelsea.png")))
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

Line = dict[str, Any]


@pytest.fixture
def store_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("store"))


class Supervised:
    """A `--workers 2` supervisor in a subprocess, and its log lines as they come."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[Line] = []
        self._new_line = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())
        self.port = 0
        self.metrics_port = 0

    @classmethod
    async def start(cls, triton_url: str, store_path: str, *extra: str,
                    env: dict[str, str] | None = None) -> Supervised:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "server", "--workers", "2", "--port", "0",
            "--metrics-port", "0", "--triton.url", triton_url,
            "--triton.health-poll-interval-s", "0.5", "--store.path", store_path,
            "--detection.default-model", "header_detector",
            "--admission.max-in-flight", "256", "--admission.peer-share", "1.0",
            "--log-format", "json", *extra,
            cwd=ROOT, stdin=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, **(env or {})})
        return cls(process)

    async def _read(self) -> None:
        assert self.process.stderr is not None
        async for raw in self.process.stderr:
            try:
                line = json.loads(raw)
            except ValueError:  # a traceback's lines
                continue
            async with self._new_line:
                self.lines.append(line)
                self._new_line.notify_all()

    async def wait_line(self, matches: Callable[[Line], bool]) -> Line:
        """The first log line (so far or to come) that matches."""
        async with asyncio.timeout(START_TIMEOUT_S), self._new_line:
            while True:
                found = next((line for line in self.lines if matches(line)), None)
                if found is not None:
                    return found
                if self._reader.done():
                    raise AssertionError("the supervisor's log ended without such a line")
                await self._new_line.wait()

    async def wait_serving(self) -> list[int]:
        """Until both workers are ready; returns their pids, worker 0 first."""
        listening = await self.wait_line(
            lambda line: str(line["message"]).startswith("supervisor: 2 workers on"))
        self.port = int(str(listening["message"]).split(",")[0].rsplit(":", 1)[1])
        self.metrics_port = int(str(listening["message"]).rsplit(":", 1)[1])
        return [await self.ready_pid(index) for index in (0, 1)]

    async def ready_pid(self, index: int, after: int = 0) -> int:
        """The pid of the `index` worker that said it was ready after `after` log lines."""
        prefix = f"worker {index} ready (pid "
        line = await self.wait_line(
            lambda line: line in self.lines[after:] and str(line["message"]).startswith(prefix))
        return int(str(line["message"])[len(prefix):-1])

    async def served_by(self, request_ids: list[str]) -> dict[str, int]:
        """The pid of the worker that logged each request's access line."""
        found: dict[str, int] = {}
        for request_id in request_ids:
            def access_line(line: Line, wanted: str = request_id) -> bool:
                return line.get("logger") == "vision.access" and line.get("request_id") == wanted

            found[request_id] = int((await self.wait_line(access_line))["pid"])
        return found

    async def stop(self) -> int:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(60):
                return await self.process.wait()
        finally:
            if self.process.returncode is None:
                self.process.kill()
                await self.process.wait()
            await self._reader


@pytest_asyncio.fixture(loop_scope="session")
async def supervised(triton_url: str, store_path: str) -> AsyncIterator[Supervised]:
    running = await Supervised.start(triton_url, store_path, "--drain-delay-s", "0")
    try:
        yield running
    finally:
        await running.stop()


def channel(port: int) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=OWN_CONNECTION)


async def detect(stub: det_grpc.DetectionServiceAsyncStub, request_id: str) -> None:
    response = await stub.DetectObjects(REQUEST, metadata=(("x-request-id", request_id),),
                                        timeout=60)
    assert len(response.detections) == 1


async def health(port: int) -> int:
    """One health check on a new connection (waiting for one the kernel accepts)."""
    async with channel(port) as fresh:
        answer = await health_pb2_grpc.HealthStub(fresh).Check(
            health_pb2.HealthCheckRequest(), wait_for_ready=True, timeout=30)
        return int(answer.status)


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


async def test_server_options_let_several_servers_bind_one_port() -> None:
    # Workers set SO_REUSEPORT and share the port; a single server does not, so a second bind
    # of its port fails (gRPC's default on Linux would let it share silently).
    options = server_options(ConnectionSettings(), reuse_port=True)
    assert ("grpc.so_reuseport", 1) in options
    first, second = grpc.aio.server(options=options), grpc.aio.server(options=options)
    port = first.add_insecure_port("127.0.0.1:0")
    assert second.add_insecure_port(f"127.0.0.1:{port}") == port
    exclusive = grpc.aio.server(options=server_options(ConnectionSettings()))
    with pytest.raises(RuntimeError):
        exclusive.add_insecure_port(f"127.0.0.1:{port}")
    for server in (first, second, exclusive):
        await server.stop(None)


async def test_calls_spread_over_both_workers_and_metrics_add_up(
        supervised: Supervised) -> None:
    pids = await supervised.wait_serving()
    assert len(set(pids)) == 2
    ids = {c: [f"spread-{c}-{i}" for i in range(8)] for c in range(CHANNELS)}
    channels = [channel(supervised.port) for _ in range(CHANNELS)]
    try:
        stubs = [det_grpc.DetectionServiceStub(ch) for ch in channels]
        await asyncio.gather(*(detect(stubs[c], request_id)
                               for c in range(CHANNELS) for request_id in ids[c]))
    finally:
        await asyncio.gather(*(ch.close() for ch in channels))
    served = await supervised.served_by([i for batch in ids.values() for i in batch])
    assert set(served.values()) == set(pids), "both workers should have served calls"
    for batch in ids.values():  # a connection stays with the worker that accepted it
        assert len({served[request_id] for request_id in batch}) == 1

    samples = await asyncio.to_thread(scrape, supervised.metrics_port)
    rpc = frozenset({("service", DETECTION), ("method", "DetectObjects")})
    assert samples[("vision_requests_total", rpc | {("code", "OK")})] == CHANNELS * 8
    assert samples[("vision_request_duration_seconds_count", rpc)] == CHANNELS * 8
    assert samples[("vision_requests_in_flight", rpc)] == 0
    assert samples[("vision_triton_breaker_state", frozenset())] == 0
    # Triton's own statistics come from the supervisor's poller.
    assert any(name == "vision_triton_inferences_total" for name, _ in samples)


async def test_a_killed_worker_is_restarted_while_the_other_serves(
        supervised: Supervised) -> None:
    victim, survivor = await supervised.wait_serving()
    channels = [channel(supervised.port) for _ in range(CHANNELS)]
    try:
        stubs = [det_grpc.DetectionServiceStub(ch) for ch in channels]
        await asyncio.gather(*(detect(stubs[c], f"map-{c}") for c in range(CHANNELS)))
        served = await supervised.served_by([f"map-{c}" for c in range(CHANNELS)])
        surviving = [stubs[c] for c in range(CHANNELS) if served[f"map-{c}"] == survivor]
        assert surviving, "no connection reached the surviving worker"

        calling, restarted = asyncio.Event(), asyncio.Event()
        done = 0

        async def keep_calling(stub: det_grpc.DetectionServiceAsyncStub, c: int) -> None:
            nonlocal done
            turn = 0
            while not restarted.is_set():
                await detect(stub, f"survivor-{c}-{turn}")
                done += 1
                turn += 1
                if done >= 2 * len(surviving):
                    calling.set()

        async def call_the_victim(stub: det_grpc.DetectionServiceAsyncStub, c: int) -> None:
            # In flight on the victim's connections when it dies: these may fail, nothing else.
            with contextlib.suppress(grpc.aio.AioRpcError):
                while not restarted.is_set():
                    await detect(stub, f"victim-{c}")

        statuses: list[int] = []

        async def keep_checking_health() -> None:
            while not restarted.is_set():
                try:
                    statuses.append(await health(supervised.port))
                except grpc.aio.AioRpcError as err:
                    # A new connection that the kernel queued on the victim's socket as it died
                    # is reset: a transport failure, not an answer; the next check reconnects.
                    assert err.code() == grpc.StatusCode.UNAVAILABLE, err

        log_mark = len(supervised.lines)
        work = [asyncio.create_task(keep_calling(stub, c)) for c, stub in enumerate(surviving)]
        work += [asyncio.create_task(call_the_victim(stubs[c], c)) for c in range(CHANNELS)
                 if served[f"map-{c}"] == victim]
        work.append(asyncio.create_task(keep_checking_health()))
        await calling.wait()  # the survivor's connections are busy: calls are in flight
        os.kill(victim, signal.SIGKILL)
        new_pid = await supervised.ready_pid(0, after=log_mark)
        restarted.set()
        await asyncio.gather(*work)  # every call on the survivor's connections succeeded
        assert done > 2 * len(surviving)
        assert statuses and all(status == SERVING for status in statuses)
        await supervised.wait_line(lambda line: "was killed by SIGKILL" in str(line["message"]))
    finally:
        await asyncio.gather(*(ch.close() for ch in channels))

    # The new worker serves: new connections reach it.
    for attempt in range(64):
        async with channel(supervised.port) as fresh:
            await detect(det_grpc.DetectionServiceStub(fresh), f"after-{attempt}")
        if (await supervised.served_by([f"after-{attempt}"]))[f"after-{attempt}"] == new_pid:
            break
    else:
        raise AssertionError("no new connection reached the restarted worker")


async def test_sigterm_drains_then_everything_exits(
        triton_url: str, store_path: str, tmp_path: Path) -> None:
    # TMPDIR: the supervisor's metrics directory is made there, and must be gone at the end.
    running = await Supervised.start(triton_url, store_path, "--drain-delay-s", "2",
                                     env={"TMPDIR": str(tmp_path)})
    try:
        pids = await running.wait_serving()
        assert await health(running.port) == SERVING
        assert os.listdir(tmp_path)
        running.process.send_signal(signal.SIGTERM)
        seen: list[str] = []
        while True:
            try:
                async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}",
                                                     options=OWN_CONNECTION) as fresh:
                    answer = await health_pb2_grpc.HealthStub(fresh).Check(
                        health_pb2.HealthCheckRequest(), timeout=5)
                seen.append(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))
            except grpc.aio.AioRpcError as err:
                # The port closed: refused (UNAVAILABLE), or cut while being accepted.
                assert err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED), err
                break
        assert "NOT_SERVING" in seen, "health should say NOT_SERVING before the port closes"
        assert "SERVING" not in seen[seen.index("NOT_SERVING"):]
        assert await running.stop() == 0
    finally:
        await running.stop()
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not os.listdir(tmp_path)


async def test_workers_that_fail_at_start_make_the_supervisor_exit_non_zero(
        triton_url: str, store_path: str) -> None:
    # mobilenet_v2 is served, but its tensors are not the detection contract: every worker
    # stops at the start-up model check.
    running = await Supervised.start(triton_url, store_path,
                                     "--detection.default-model", "mobilenet_v2")
    async with asyncio.timeout(START_TIMEOUT_S):
        code = await running.process.wait()
    await running.stop()
    assert code == 1
    failures = [line for line in running.lines if "before it was ready" in str(line["message"])]
    assert len(failures) == 3
    assert any("keep failing at start" in str(line["message"]) for line in running.lines)
    assert not any("ready (pid" in str(line["message"]) for line in running.lines)


async def test_a_taken_port_makes_the_supervisor_exit_non_zero(
        triton_url: str, store_path: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        running = await Supervised.start(triton_url, store_path, "--port", str(port))
        async with asyncio.timeout(START_TIMEOUT_S):
            code = await running.process.wait()
        await running.stop()
    assert code == 1
    assert any(str(line["message"]).startswith(f"cannot bind 127.0.0.1:{port}")
               for line in running.lines)


async def test_both_workers_share_one_store(supervised: Supervised) -> None:
    """Indexed through one worker, found, read and deleted through the other."""
    first, second = await supervised.wait_serving()
    channels = [channel(supervised.port) for _ in range(CHANNELS)]
    try:
        stubs = [det_grpc.DetectionServiceStub(ch) for ch in channels]
        await asyncio.gather(*(detect(stubs[c], f"store-map-{c}") for c in range(CHANNELS)))
        served = await supervised.served_by([f"store-map-{c}" for c in range(CHANNELS)])
        writer = next(ch for c, ch in enumerate(channels) if served[f"store-map-{c}"] == first)
        reader = next(ch for c, ch in enumerate(channels) if served[f"store-map-{c}"] == second)
        await ingest_grpc.IngestServiceStub(writer).IngestImage(
            ingest_service_pb2.IngestImageRequest(
                options=ingest_pb2.IngestOptions(id="chelsea.png"),
                image=image_pb2.Image(content=photo("chelsea.png"))), timeout=120)
        read = ingest_grpc.IngestServiceStub(reader)
        got = await read.GetImage(ingest_service_pb2.GetImageRequest(id="chelsea.png"),
                                  timeout=30)
        assert got.image.id == "chelsea.png"
        hits = await search_grpc.SearchServiceStub(reader).Search(
            search_service_pb2.SearchRequest(text="person"), timeout=30)
        assert [hit.id for hit in hits.hits][:1] == ["chelsea.png"]
        await read.DeleteImage(ingest_service_pb2.DeleteImageRequest(id="chelsea.png"),
                               timeout=30)
        with pytest.raises(grpc.aio.AioRpcError) as gone:
            await ingest_grpc.IngestServiceStub(writer).GetImage(
                ingest_service_pb2.GetImageRequest(id="chelsea.png"), timeout=30)
        assert gone.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        await asyncio.gather(*(ch.close() for ch in channels))
