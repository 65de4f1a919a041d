"""grpc.health.v1 driven by Triton: each service is SERVING only while Triton and the models it
needs answer ready; checked in the background so health calls never wait on Triton."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any

from grpc_health.v1 import health, health_pb2
from tritonclient.grpc.aio import InferenceServerClient
from tritonclient.utils import InferenceServerException

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class TritonHealthWatcher:
    """Polls Triton and sets the health status of each service (and of "", the whole server)."""

    def __init__(
        self,
        client: InferenceServerClient,
        servicer: health.aio.HealthServicer,
        models_by_service: Mapping[str, Sequence[str]],
        interval_s: float,
    ) -> None:
        self._client = client
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
        ready_models: dict[str, bool] = {}
        server_ready = await self._ask(self._client.is_server_ready(client_timeout=timeout))
        for models in self._models_by_service.values():
            for model in models:
                if model not in ready_models:
                    ready_models[model] = server_ready and await self._ask(
                        self._client.is_model_ready(model, client_timeout=timeout))
        all_ok = server_ready
        for service, models in self._models_by_service.items():
            ok = server_ready and all(ready_models[m] for m in models)
            all_ok = all_ok and ok
            await self._servicer.set(service, SERVING if ok else NOT_SERVING)
        await self._servicer.set("", SERVING if all_ok else NOT_SERVING)
        self.checked.set()

    @staticmethod
    async def _ask(probe: Awaitable[Any]) -> bool:
        try:
            return bool(await probe)
        except (InferenceServerException, OSError) as exc:
            log.warning("triton readiness check failed: %s", exc)
            return False
