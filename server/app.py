"""Start-up and shutdown: settings → Triton client → registry of services → gRPC server, and
back down in reverse order. `create_server` is what tests call (with port 0)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from server.background import run_in_background
from server.health import TritonHealthWatcher
from server.interceptors.admission import Admission, AdmissionInterceptor, AdmissionLimits
from server.interceptors.inflight import InFlight
from server.interceptors.malformed import MalformedRequestInterceptor
from server.interceptors.request_id import RequestIdInterceptor
from server.interceptors.wrapping import InterceptedServer
from server.operations import Operations, add_port, start_operations
from server.reflection import enable_reflection
from server.servicers.streams import UploadBudget
from server.services import SERVICES, Resources, Service
from server.settings import ConnectionSettings, Settings
from server.store import Space, open_store
from server.store.timed import TimedStore
from server.triton.aggregation import Aggregator
from server.triton.breaker import CircuitBreaker
from server.triton.calls import Inference, TritonCalls, create_client

log = logging.getLogger(__name__)

HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
MODEL_CHECK_TIMEOUT_S = 5.0


class ModelContractError(RuntimeError):
    """A served model's tensors differ from what its adapter sends or reads."""


@dataclass
class RunningServer:
    """A started server and what it owns; `stop` releases all of it in reverse order."""

    server: grpc.aio.Server
    port: int
    health_watcher: TritonHealthWatcher
    health_servicer: health.aio.HealthServicer
    in_flight: InFlight
    admission: Admission  # unary-request calls
    stream_admission: Admission  # streaming-request calls (uploads)
    resources: Resources
    _resources: contextlib.AsyncExitStack
    operations: Operations | None = None

    @property
    def metrics_port(self) -> int:
        return self.operations.metrics_port if self.operations is not None else 0

    async def stop(self, grace_s: float | None, drain_delay_s: float = 0.0) -> None:
        """Graceful: health says NOT_SERVING (and stays so), then for drain_delay_s calls are
        still served so load balancers notice before the listener closes; then new calls are
        refused and in-flight ones get grace_s to finish; then the background checks stop and
        the Triton channel closes."""
        await self.health_servicer.enter_graceful_shutdown()
        if drain_delay_s > 0:
            await asyncio.sleep(drain_delay_s)
        await self.server.stop(grace_s)
        await self._resources.aclose()


async def create_server(
    settings: Settings, services: Sequence[Service] = SERVICES
) -> RunningServer:
    """Builds and starts the server inside the running loop; returns it with its bound port.
    Raises ModelContractError when a ready model does not match its adapter."""
    stack = contextlib.AsyncExitStack()
    try:
        return await _start(settings, services, stack)
    except BaseException:
        await stack.aclose()
        raise


async def _start(settings: Settings, services: Sequence[Service],
                 stack: contextlib.AsyncExitStack) -> RunningServer:
    breaker = CircuitBreaker(settings.breaker.failure_threshold, settings.breaker.reset_after_s)
    triton = TritonCalls(create_client(settings.triton.url), settings.triton.timeout_s, breaker)
    stack.push_async_callback(triton.close)
    operations = await start_operations(settings, triton, stack)
    await check_models(triton, services, settings)
    store = TimedStore(await open_store(
        settings.store, {Space.IMAGES: settings.embedding.output_dimension,
                         Space.FACES: settings.faces.output_dimension}))
    stack.push_async_callback(store.close)
    detection_calls: Inference = triton
    if settings.aggregation.enabled:
        g = settings.aggregation
        aggregator = Aggregator(triton, g.max_batch, g.max_delay_s, g.max_batches_in_flight,
                                g.max_call_bytes)
        stack.push_async_callback(aggregator.close)
        detection_calls = aggregator
    resources = Resources(settings=settings, triton=triton, store=store,
                          upload_budget=UploadBudget(max(settings.limits.max_upload_buffer_bytes,
                                                         settings.limits.max_image_bytes)),
                          detection_calls=detection_calls)

    in_flight = InFlight()
    a = settings.admission
    limits = AdmissionLimits(
        max_in_flight=a.max_in_flight, max_waiting=a.max_waiting, max_wait_s=a.max_wait_s,
        peer_share=a.peer_share, min_deadline_s=a.min_deadline_s, retry_after_s=a.retry_after_s)
    admission = Admission(limits)
    stream_admission = Admission(dataclasses.replace(limits, max_in_flight=a.max_streams))
    # Refusals of auth and admission pass through the metrics and access-log interceptors, so
    # they are counted and logged.
    server = grpc.aio.server(options=server_options(settings.connection))
    registry = InterceptedServer(server, [
        in_flight, MalformedRequestInterceptor(), RequestIdInterceptor(), *operations.interceptors,
        AdmissionInterceptor(admission, stream_admission)])
    for service in services:
        service.add_to_server(service.build(resources), registry)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, registry)
    enable_reflection((*(s.name for s in services), HEALTH_SERVICE), registry)
    port = add_port(server, settings)

    watcher = TritonHealthWatcher(
        triton, health_servicer, {s.name: s.models(settings) for s in services},
        settings.triton.health_poll_interval_s)
    await server.start()
    run_in_background(stack, watcher.run())
    log.info("vision-grpc listening on %s:%d%s (metrics :%d, triton %s)", settings.host, port,
             " with TLS" if settings.tls.cert_file else "", operations.metrics_port,
             settings.triton.url)
    return RunningServer(server, port, watcher, health_servicer, in_flight, admission,
                         stream_admission, resources, stack, operations)


def server_options(connection: ConnectionSettings) -> list[tuple[str, int]]:
    """grpc core channel arguments for the connection limits in settings."""
    def ms(seconds: float) -> int:
        return int(seconds * 1000)

    return [
        # grpc core's default on Linux, made explicit: the workers of `--workers N` all bind
        # the same port and the kernel spreads connections over them.
        ("grpc.so_reuseport", 1),
        ("grpc.max_receive_message_length", connection.max_receive_message_bytes),
        ("grpc.max_concurrent_streams", connection.max_concurrent_streams),
        ("grpc.keepalive_time_ms", ms(connection.keepalive_time_s)),
        ("grpc.keepalive_timeout_ms", ms(connection.keepalive_timeout_s)),
        ("grpc.http2.min_ping_interval_without_data_ms",
         ms(connection.min_client_ping_interval_s)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.max_connection_idle_ms", ms(connection.max_connection_idle_s)),
        ("grpc.max_connection_age_ms", ms(connection.max_connection_age_s)),
        ("grpc.max_connection_age_grace_ms", ms(connection.max_connection_age_grace_s)),
        ("grpc.http2.bdp_probe", int(connection.http2_bdp_probe)),
    ]


async def check_models(triton: TritonCalls, services: Sequence[Service],
                       settings: Settings) -> None:
    """Compares every ready model with the tensors its adapter relies on. Models that are not
    ready (or a Triton that does not answer) are left to health, which reports them."""
    if not await triton.server_ready(MODEL_CHECK_TIMEOUT_S):
        log.warning("triton at %s is not ready; model contracts not checked at start-up",
                    settings.triton.url)
        return
    for service in services:
        if service.tensors is None:
            continue
        for model in service.models(settings):
            if not await triton.model_ready(model, MODEL_CHECK_TIMEOUT_S):
                continue
            metadata = await triton.model_metadata(model, MODEL_CHECK_TIMEOUT_S)
            problems = service.tensors(settings).mismatches(metadata)
            if problems:
                raise ModelContractError(
                    f"model {model!r} does not match what {service.name} sends and reads: "
                    + "; ".join(problems))
