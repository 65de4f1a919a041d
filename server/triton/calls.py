"""The one shared channel to Triton per process and the one generic call path every
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
from typing import Any, Protocol

import grpc
import numpy as np
import numpy.typing as npt
from google.protobuf import json_format
from google.protobuf.message import Message
from tritonclient.grpc import service_pb2, service_pb2_grpc

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
from server.triton import wire
from server.triton.breaker import CircuitBreaker
from server.triton.tensors import IMAGE_STATUS, STATUS_OK, STATUS_TOO_COMPLEX, ModelTensors

log = logging.getLogger(__name__)

Array = wire.Array

# Triton reports both of its queue-policy rejections as UNAVAILABLE with no structured reason;
# these messages (Triton core's scheduler) are the only way to tell them from a backend that is
# down, and they are matched here and nowhere else.
_QUEUE_FULL = "Exceeds maximum queue size"
_TIMED_OUT = "Request timeout"
# Images and results of any size the server accepts travel to and from Triton unlimited; the
# server's own limits apply at its edge. Reconnecting is retried at least every second: with
# gRPC's default back-off (up to 120 s) a server took 12 s to notice a restarted Triton
# (bench/soak.py); Triton is one local peer, so frequent attempts cost nothing.
_CHANNEL_OPTIONS = [("grpc.max_send_message_length", -1),
                    ("grpc.max_receive_message_length", -1),
                    ("grpc.initial_reconnect_backoff_ms", 100),
                    ("grpc.min_reconnect_backoff_ms", 100),
                    ("grpc.max_reconnect_backoff_ms", 1000)]


class Inference(Protocol):
    """What an adapter calls: TritonCalls, or the aggregator in front of it."""

    async def infer(self, model: ModelRef, tensors: ModelTensors, inputs: Mapping[str, Array],
                    request_id: str, timeout_s: float | None) -> dict[str, Array]: ...

    def served(self, model: ModelRef) -> ModelRef:
        """`model` naming the version that answered it (TritonCalls.served)."""
        ...


class TritonClient:
    """The process's one channel to Triton and the generated stub over it."""

    def __init__(self, url: str) -> None:
        self.channel = grpc.aio.insecure_channel(url, options=_CHANNEL_OPTIONS)
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()


def create_client(url: str) -> TritonClient:
    """The process's one client; call inside the running event loop (its channel binds to it)."""
    return TritonClient(url)


class TritonCalls:
    """Inference, readiness and metadata over the shared client."""

    def __init__(self, client: TritonClient, default_timeout_s: float,
                 breaker: CircuitBreaker | None = None) -> None:
        self._client = client
        self._stub = client.stub
        self._default_timeout_s = default_timeout_s
        self.breaker = breaker or CircuitBreaker(failure_threshold=5, reset_after_s=2.0)
        # Per model name, the version of Triton's latest answer (ModelInferResponse.model_version).
        self._answered: dict[str, str] = {}

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
        outputs = await self.infer_batch(model, tensors, inputs, request_id, timeout_s)
        check_statuses(outputs)
        return outputs

    async def infer_batch(
        self,
        model: ModelRef,
        tensors: ModelTensors,
        inputs: Mapping[str, Array],
        request_id: str,
        timeout_s: float | None,
    ) -> dict[str, Array]:
        """Runs one request of any number of images and returns its outputs unchecked: the
        per-image decode statuses are the callers' to check (check_statuses), one image each
        when the request carries several callers' images (server.triton.aggregation)."""
        self.breaker.before_call()
        timeout = timeout_s if timeout_s is not None else self._default_timeout_s
        request = wire.infer_request(
            model.name, model.version, tensors.inputs, inputs, tensors.output_names, request_id,
            max(1, int(timeout * 1_000_000)))  # Triton's timeout is in microseconds
        try:
            with metrics.time_inference(model.name):
                response = await self._stub.ModelInfer(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
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
        if response.model_version:
            self._answered[model.name] = response.model_version
        return wire.response_outputs(response)

    def served(self, model: ModelRef) -> ModelRef:
        """`model` with the version that answered: the pinned one, else the version of
        Triton's latest answer for that name (Triton runs an unpinned name's newest ready
        version). Called after `infer`, so the answer is known; while Triton swaps versions, a
        call answered by the old one at the same moment may be named with the new one."""
        if model.version:
            return model
        return ModelRef(model.name, self._answered.get(model.name, ""))

    async def server_ready(self, timeout_s: float) -> bool:
        return await self._ready(self._stub.ServerReady(
            service_pb2.ServerReadyRequest(), timeout=timeout_s))

    async def model_ready(self, name: str, timeout_s: float) -> bool:
        return await self._ready(self._stub.ModelReady(
            service_pb2.ModelReadyRequest(name=name), timeout=timeout_s))

    async def model_metadata(self, name: str, timeout_s: float) -> dict[str, Any]:
        return _as_json(await self._stub.ModelMetadata(
            service_pb2.ModelMetadataRequest(name=name), timeout=timeout_s))

    async def repository_index(self, timeout_s: float) -> list[dict[str, Any]]:
        """Triton's repository index: one entry per model version with its state."""
        try:
            index = await self._stub.RepositoryIndex(
                service_pb2.RepositoryIndexRequest(), timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise _unavailable_or_backend(exc) from exc
        models: list[dict[str, Any]] = _as_json(index).get("models", [])
        return models

    async def model_config(self, name: str, timeout_s: float) -> dict[str, Any] | None:
        """The model's configuration as Triton loaded it; None when Triton has none loaded."""
        try:
            answer = await self._stub.ModelConfig(
                service_pb2.ModelConfigRequest(name=name), timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE):
                return None
            raise _unavailable_or_backend(exc) from exc
        config: dict[str, Any] = _as_json(answer).get("config", {})
        return config

    async def inference_statistics(self, timeout_s: float) -> dict[str, Any]:
        """Triton's cumulative per-model statistics ({"model_stats": [...]}, counts as strings)."""
        return _as_json(await self._stub.ModelStatistics(
            service_pb2.ModelStatisticsRequest(), timeout=timeout_s))

    @staticmethod
    async def _ready(probe: Any) -> bool:
        try:
            return bool((await probe).ready)
        except (grpc.aio.AioRpcError, OSError) as exc:
            log.warning("triton readiness check failed: %s", _describe(exc))
            return False

    async def close(self) -> None:
        await self._client.close()


def check_statuses(outputs: Mapping[str, Array]) -> None:
    """Raises IMAGE_TOO_COMPLEX or IMAGE_DECODE_FAILED when the decode step could not read an
    image of these outputs (IMAGE_STATUS)."""
    status = outputs.get(IMAGE_STATUS)
    if status is None or not status.any():  # STATUS_OK is 0: the common case in one reduction
        return
    if (status == STATUS_TOO_COMPLEX).any():
        raise InvalidArgumentError.one(
            "IMAGE_TOO_COMPLEX", Input.IMAGE, "",
            "the image needs more decoding work than allowed (too many JPEG scans)")
    if (status != STATUS_OK).any():
        raise InvalidArgumentError.one(
            "IMAGE_DECODE_FAILED", Input.IMAGE, "", "the image data could not be decoded")


def _as_json(message: Message) -> dict[str, Any]:
    """A Triton answer as JSON-like dicts (proto field names; 64-bit integers as strings, as in
    Triton's own JSON)."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return str(exc)


def _domain_error(exc: grpc.aio.AioRpcError, model: ModelRef) -> Exception:
    code = exc.code()
    text = exc.details() or ""
    if _QUEUE_FULL in text:
        return ResourceExhaustedError("BACKEND_QUEUE_FULL", retry_after_s=0.5)
    if _TIMED_OUT in text:
        return DeadlineExceededError()
    if code == grpc.StatusCode.NOT_FOUND:
        # The pipeline only lets through names the service is configured for, so a NOT_FOUND
        # for a pinned version means that version; otherwise the model itself is missing.
        return ModelNotFoundError(model, "model.version" if model.version else "model.name")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceededError()
    if code == grpc.StatusCode.UNAVAILABLE:
        return BackendUnavailableError()
    log.error("triton call to %s failed: status=%s message=%s", model.name, code.name, text)
    return BackendError(f"{code.name}: {text}")


def _unavailable_or_backend(exc: grpc.aio.AioRpcError) -> Exception:
    if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return BackendUnavailableError()
    log.error("triton request failed: %s", _describe(exc))
    return BackendError(_describe(exc))


def scalar(value: float | int | bool | bytes, dtype: npt.DTypeLike) -> Array:
    """A one-image [1, 1] tensor holding value."""
    return np.array([[value]], dtype=dtype)
