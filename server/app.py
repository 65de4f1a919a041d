"""Start-up and shutdown: settings → Triton client → pipeline → servicers → gRPC server, and back
down in reverse order. `create_server` is what tests call (with port 0)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from tritonclient.grpc.aio import InferenceServerClient

from server import triton
from server.health import TritonHealthWatcher
from server.interceptors.inflight import InFlight
from server.pipeline.detection import DetectionConfig, DetectionPipeline
from server.servicers.detection import DetectionServicer
from server.settings import Settings
from vision.v1 import detection_service_pb2 as det_pb2
from vision.v1 import detection_service_pb2_grpc as det_grpc

log = logging.getLogger(__name__)

DETECTION_SERVICE = det_pb2.DESCRIPTOR.services_by_name["DetectionService"].full_name


@dataclass
class RunningServer:
    """A started server and what it owns; `stop` releases all of it."""

    server: grpc.aio.Server
    port: int
    triton_client: InferenceServerClient
    health_watcher: TritonHealthWatcher
    health_servicer: health.aio.HealthServicer
    in_flight: InFlight
    _watch_task: asyncio.Task[None]

    async def stop(self, grace_s: float | None) -> None:
        """Graceful: health says NOT_SERVING, new calls are refused, in-flight ones get grace_s
        to finish; then the Triton channel closes."""
        await self.health_servicer.enter_graceful_shutdown()
        await self.server.stop(grace_s)
        self._watch_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._watch_task
        await self.triton_client.close()


async def create_server(settings: Settings) -> RunningServer:
    """Builds and starts the server inside the running loop; returns it with its bound port."""
    client = triton.create_client(settings.triton.url)
    detection = settings.detection
    pipeline = DetectionPipeline(
        triton.TritonDetector(client, settings.triton.timeout_s),
        DetectionConfig(
            models=frozenset(detection.models),
            default_model=detection.default_model,
            default_score_threshold=detection.default_score_threshold,
            default_iou_threshold=detection.default_iou_threshold,
            default_max_detections=detection.default_max_detections,
            limits=settings.limits.image_limits(),
        ),
    )
    in_flight = InFlight()
    server = grpc.aio.server(interceptors=[in_flight])
    det_grpc.add_DetectionServiceServicer_to_server(
        DetectionServicer(pipeline, settings.limits.max_image_bytes,
                          settings.limits.max_stream_in_flight),
        server,
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (DETECTION_SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME),
        server,
    )
    port = server.add_insecure_port(f"{settings.host}:{settings.port}")
    if port == 0:
        raise OSError(f"cannot bind {settings.host}:{settings.port}")
    watcher = TritonHealthWatcher(
        client, health_servicer, {DETECTION_SERVICE: [detection.default_model]},
        settings.triton.health_poll_interval_s,
    )
    await server.start()
    watch_task = asyncio.create_task(watcher.run())
    log.info("vision-grpc listening on %s:%d (triton %s)", settings.host, port,
             settings.triton.url)
    return RunningServer(server, port, client, watcher, health_servicer, in_flight, watch_task)
