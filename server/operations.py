"""What an operator needs around the services, started with the server and owned by its exit
stack: API keys and their reloading, the interceptors that authenticate and observe each call,
the /metrics endpoint and the Triton statistics poller, and the (TLS or plaintext) port."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection

from server import metrics
from server.auth import KeyStore
from server.background import run_in_background
from server.interceptors.auth import AuthInterceptor
from server.interceptors.metrics import MetricsInterceptor
from server.interceptors.wrapping import Interceptor
from server.settings import Settings
from server.tls import check_exposure, server_credentials
from server.triton.calls import TritonCalls

HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
REFLECTION_SERVICES = frozenset({reflection.SERVICE_NAME, "grpc.reflection.v1.ServerReflection"})
STATS_TIMEOUT_S = 5.0


@dataclass
class Operations:
    interceptors: list[Interceptor]  # to run inside the request-id interceptor
    keys: KeyStore | None
    metrics_port: int
    triton_stats: metrics.TritonStatsPoller


async def start_operations(settings: Settings, triton: TritonCalls,
                           stack: contextlib.AsyncExitStack) -> Operations:
    """Checks exposure, loads the keys (a bad key file stops start-up) and starts the
    background work; everything started is stopped by `stack`."""
    check_exposure(settings)
    interceptors: list[Interceptor] = [MetricsInterceptor()]
    keys = None
    if settings.auth.key_file is not None:
        keys = KeyStore(settings.auth.key_file, settings.auth.reload_interval_s)
        keys.load()
        run_in_background(stack, keys.run())
        open_services = frozenset(
            ({HEALTH_SERVICE} if settings.auth.open_health else set())
            | (REFLECTION_SERVICES if settings.auth.open_reflection else set()))
        interceptors.append(AuthInterceptor(keys, open_services))

    poller = metrics.TritonStatsPoller(
        lambda: triton.inference_statistics(STATS_TIMEOUT_S), settings.triton_stats_interval_s)
    if metrics.in_worker_files():
        # One of several workers: the supervisor serves /metrics (on the port it bound and put
        # in these settings) and polls Triton's statistics once for all of them.
        return Operations(interceptors, keys, settings.metrics_port, poller)
    metrics_port, httpd = metrics.serve(settings.metrics_host or settings.host,
                                        settings.metrics_port)
    stack.callback(metrics.stop_serving, httpd)
    run_in_background(stack, poller.run())
    return Operations(interceptors, keys, metrics_port, poller)


def add_port(server: grpc.aio.Server, settings: Settings) -> int:
    """Binds the gRPC port, with TLS when a certificate is configured; returns the bound port."""
    address = f"{settings.host}:{settings.port}"
    credentials = server_credentials(settings.tls)
    port = (server.add_insecure_port(address) if credentials is None
            else server.add_secure_port(address, credentials))
    if port == 0:
        raise OSError(f"cannot bind {address}")
    return port
