"""grpc.health.v1 driven by Triton: each service is SERVING only while Triton and every model it
needs answer ready and the circuit breaker on the Triton channel is not open (calls would fail
fast); checked in the background so health calls never wait on Triton. A Triton that does not
answer the readiness check holds the breaker open until it answers again, so that calls fail
fast with UNAVAILABLE + RetryInfo instead of waiting on a hung backend."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

from grpc_health.v1 import health, health_pb2

from server import metrics
from server.triton.breaker import BreakerState
from server.triton.calls import TritonCalls

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class TritonHealthWatcher:
    """Polls Triton and sets the health status of each service (and of "", the whole server)."""

    def __init__(
        self,
        triton: TritonCalls,
        servicer: health.aio.HealthServicer,
        models_by_service: Mapping[str, Sequence[str]],
        interval_s: float,
    ) -> None:
        self._triton = triton
        self._servicer = servicer
        self._models_by_service = models_by_service
        self._interval_s = interval_s
        self.checked = asyncio.Event()  # set after the first check, for start-up and tests

    async def run(self) -> None:
        while True:
            await self.check_once()
            await asyncio.sleep(self._interval_s)

    async def check_once(self) -> None:
        timeout = min(self._interval_s, 5.0)
        answered = await self._triton.server_ready(timeout)
        self._triton.breaker.hold_open(not answered)
        breaker = self._triton.breaker.state
        metrics.set_breaker_state(breaker.value)
        server_ready = answered and breaker is not BreakerState.OPEN
        ready: dict[str, bool] = {}
        for models in self._models_by_service.values():
            for model in models:
                if model not in ready:
                    ready[model] = server_ready and await self._triton.model_ready(
                        model, timeout)
        all_ok = server_ready
        for service, models in self._models_by_service.items():
            ok = server_ready and all(ready[m] for m in models)
            all_ok = all_ok and ok
            await self._servicer.set(service, SERVING if ok else NOT_SERVING)
        await self._servicer.set("", SERVING if all_ok else NOT_SERVING)
        self.checked.set()
