"""The one shared `tritonclient.grpc.aio` client per process and the one generic call path every
adapter uses: deadline, request id, cancellation, error mapping, the circuit breaker and the
per-image decode status. It knows models and tensors, never a task's options or a request's
fields.

The caller's remaining deadline travels twice: as the gRPC deadline of the call to Triton and as
Triton's own per-request timeout, so that Triton drops a request still queued when its caller is
gone instead of decoding it and running the network (the models' queue policies reject expired
requests, model_repository/*/config.pbtxt).

One client (one HTTP/2 channel) for every request is the point of the design: Triton's dynamic
batcher can only batch what arrives concurrently on its queue, and a channel per request would
also pay a TCP + HTTP/2 handshake each time.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.grpc.aio import InferenceServerClient
from tritonclient.utils import InferenceServerException

from server import metrics
from server.domain import (
    BackendError,
    BackendUnavailableError,
    DeadlineExceededError,
    Input,
    InvalidArgumentError,
    ModelNotFoundError,
    ModelRef,
    ResourceExhaustedError,
)
from server.triton.breaker import CircuitBreaker
from server.triton.tensors import IMAGE_STATUS, STATUS_OK, STATUS_TOO_COMPLEX, ModelTensors

log = logging.getLogger(__name__)

Array = npt.NDArray[Any]

# Triton reports both of its queue-policy rejections as UNAVAILABLE with no structured reason;
# these messages (Triton core's scheduler) are the only way to tell them from a backend that is
# down, and they are matched here and nowhere else.
_QUEUE_FULL = "Exceeds maximum queue size"
_TIMED_OUT = "Request timeout"


def create_client(url: str) -> InferenceServerClient:
    """The process's one client; call inside the running event loop (its channel binds to it)."""
    return InferenceServerClient(url=url)


class TritonCalls:
    """Inference, readiness and metadata over the shared client."""

    def __init__(self, client: InferenceServerClient, default_timeout_s: float,
                 breaker: CircuitBreaker | None = None) -> None:
        self._client = client
        self._default_timeout_s = default_timeout_s
        self.breaker = breaker or CircuitBreaker(failure_threshold=5, reset_after_s=2.0)
        self._requested: dict[tuple[str, ...], list[InferRequestedOutput]] = {}

    async def infer(
        self,
        model: ModelRef,
        tensors: ModelTensors,
        inputs: Mapping[str, Array],
        request_id: str,
        timeout_s: float | None,
    ) -> dict[str, Array]:
        """Runs one request; returns its outputs by name. An image the model could not decode
        raises IMAGE_DECODE_FAILED (IMAGE_TOO_COMPLEX past the decode budget); Triton's failures
        become domain errors; while the breaker is open it raises BackendUnavailableError."""
        self.breaker.before_call()
        timeout = timeout_s if timeout_s is not None else self._default_timeout_s
        infer_inputs = []
        for spec in tensors.inputs:
            tensor = InferInput(spec.name, list(inputs[spec.name].shape), spec.datatype)
            tensor.set_data_from_numpy(inputs[spec.name])
            infer_inputs.append(tensor)
        try:
            with metrics.time_inference(model.name):
                result = await self._client.infer(
                    model_name=model.name,
                    model_version=model.version,
                    inputs=infer_inputs,
                    outputs=self._outputs(tensors.output_names),
                    request_id=request_id,
                    timeout=max(1, int(timeout * 1_000_000)),  # Triton's, in microseconds
                    client_timeout=timeout,
                )
        except InferenceServerException as exc:
            error = _domain_error(exc, model)
            if isinstance(error, BackendUnavailableError | BackendError):
                self.breaker.failed()
            else:
                self.breaker.settled()
            raise error from exc
        except BaseException:
            self.breaker.settled()  # cancelled by the caller: nothing learnt about Triton
            raise
        self.breaker.succeeded()
        outputs = {name: result.as_numpy(name) for name in tensors.output_names}
        status = outputs.get(IMAGE_STATUS)
        if status is not None and (status == STATUS_TOO_COMPLEX).any():
            raise InvalidArgumentError.one(
                "IMAGE_TOO_COMPLEX", Input.IMAGE, "",
                "the image needs more decoding work than allowed (too many JPEG scans)")
        if status is not None and (status != STATUS_OK).any():
            raise InvalidArgumentError.one(
                "IMAGE_DECODE_FAILED", Input.IMAGE, "", "the image data could not be decoded")
        return outputs

    def _outputs(self, names: tuple[str, ...]) -> list[InferRequestedOutput]:
        requested = self._requested.get(names)
        if requested is None:
            requested = self._requested[names] = [InferRequestedOutput(n) for n in names]
        return requested

    async def server_ready(self, timeout_s: float) -> bool:
        return await self._ask(self._client.is_server_ready(client_timeout=timeout_s))

    async def model_ready(self, name: str, timeout_s: float) -> bool:
        return await self._ask(self._client.is_model_ready(name, client_timeout=timeout_s))

    async def model_metadata(self, name: str, timeout_s: float) -> dict[str, Any]:
        metadata: dict[str, Any] = await self._client.get_model_metadata(
            name, as_json=True, client_timeout=timeout_s)
        return metadata

    async def repository_index(self, timeout_s: float) -> list[dict[str, Any]]:
        """Triton's repository index: one entry per model version with its state."""
        try:
            index = await self._client.get_model_repository_index(
                as_json=True, client_timeout=timeout_s)
        except InferenceServerException as exc:
            raise _unavailable_or_backend(exc) from exc
        models: list[dict[str, Any]] = index.get("models", [])
        return models

    async def model_config(self, name: str, timeout_s: float) -> dict[str, Any] | None:
        """The model's configuration as Triton loaded it; None when Triton has none loaded."""
        try:
            answer = await self._client.get_model_config(
                name, as_json=True, client_timeout=timeout_s)
        except InferenceServerException as exc:
            if str(exc.status() or "").endswith(("NOT_FOUND", "UNAVAILABLE")):
                return None
            raise _unavailable_or_backend(exc) from exc
        config: dict[str, Any] = answer.get("config", {})
        return config

    async def inference_statistics(self, timeout_s: float) -> dict[str, Any]:
        """Triton's cumulative per-model statistics ({"model_stats": [...]}, counts as strings)."""
        stats: dict[str, Any] = await self._client.get_inference_statistics(
            as_json=True, client_timeout=timeout_s)
        return stats

    @staticmethod
    async def _ask(probe: Any) -> bool:
        try:
            return bool(await probe)
        except (InferenceServerException, OSError) as exc:
            log.warning("triton readiness check failed: %s", exc)
            return False

    async def close(self) -> None:
        await self._client.close()


def _domain_error(exc: InferenceServerException, model: ModelRef) -> Exception:
    status = str(exc.status() or "")
    text = str(exc.message() or "")
    if _QUEUE_FULL in text:
        return ResourceExhaustedError("BACKEND_QUEUE_FULL", retry_after_s=0.5)
    if _TIMED_OUT in text:
        return DeadlineExceededError()
    if status.endswith("NOT_FOUND"):
        # The pipeline only lets through names the service is configured for, so a NOT_FOUND
        # for a pinned version means that version; otherwise the model itself is missing.
        return ModelNotFoundError(model, "model.version" if model.version else "model.name")
    if status.endswith("DEADLINE_EXCEEDED"):
        return DeadlineExceededError()
    if status.endswith("UNAVAILABLE"):
        return BackendUnavailableError()
    log.error("triton call to %s failed: status=%s message=%s", model.name, status, exc.message())
    return BackendError(f"{status}: {exc.message()}")


def _unavailable_or_backend(exc: InferenceServerException) -> Exception:
    if str(exc.status() or "").endswith(("UNAVAILABLE", "DEADLINE_EXCEEDED")):
        return BackendUnavailableError()
    log.error("triton request failed: status=%s message=%s", exc.status(), exc.message())
    return BackendError(f"{exc.status()}: {exc.message()}")


def scalar(value: float | int | bool | bytes, dtype: npt.DTypeLike) -> Array:
    """A one-image [1, 1] tensor holding value."""
    return np.array([[value]], dtype=dtype)
