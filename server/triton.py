"""The Triton adapter: one shared `tritonclient.grpc.aio` client per process, tensor names that
match model_repository/*/config.pbtxt, deadlines passed through, Triton errors as domain errors.

One client (one HTTP/2 channel) for every request is the point of the design: Triton's dynamic
batcher can only batch what arrives concurrently on its queue, and a channel per request would
also pay a TCP + HTTP/2 handshake each time.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.grpc.aio import InferenceServerClient
from tritonclient.utils import InferenceServerException

from server.domain import (
    BackendError,
    BackendUnavailableError,
    Box,
    DeadlineExceededError,
    Detection,
    DetectionResult,
    DetectOptions,
    InvalidArgumentError,
    ModelNotFoundError,
)

log = logging.getLogger(__name__)


class DetectorTensors:
    """Inputs and outputs of the detection ensembles (model_repository/yolox_nano/config.pbtxt)."""

    IMAGE = "IMAGE"  # BYTES [1]: the still-encoded image
    SCORE_THRESHOLD = "SCORE_THRESHOLD"  # FP32 [1]
    IOU_THRESHOLD = "IOU_THRESHOLD"  # FP32 [1]
    BOXES = "BOXES"  # FP32 [n, 4]: x1, y1, x2, y2 in original pixels
    SCORES = "SCORES"  # FP32 [n]
    CLASS_IDS = "CLASS_IDS"  # INT32 [n]
    LABELS = "LABELS"  # BYTES [n]
    IMAGE_SIZE = "IMAGE_SIZE"  # INT32 [2]: height, width after decoding
    OUTPUTS = (BOXES, SCORES, CLASS_IDS, LABELS, IMAGE_SIZE)


def create_client(url: str) -> InferenceServerClient:
    """The process's one client; call inside the running event loop (its channel binds to it)."""
    return InferenceServerClient(url=url)


class TritonDetector:
    """Runs a detection ensemble on Triton for one image."""

    def __init__(self, client: InferenceServerClient, default_timeout_s: float) -> None:
        self._client = client
        self._default_timeout_s = default_timeout_s
        self._outputs = [InferRequestedOutput(name) for name in DetectorTensors.OUTPUTS]

    async def detect(
        self, content: bytes, options: DetectOptions, request_id: str, timeout_s: float | None
    ) -> DetectionResult:
        inputs = [
            _tensor(DetectorTensors.IMAGE, np.array([[content]], dtype=np.object_), "BYTES"),
            _tensor(DetectorTensors.SCORE_THRESHOLD,
                    np.array([[options.score_threshold]], dtype=np.float32), "FP32"),
            _tensor(DetectorTensors.IOU_THRESHOLD,
                    np.array([[options.iou_threshold]], dtype=np.float32), "FP32"),
        ]
        try:
            result = await self._client.infer(
                model_name=options.model.name,
                model_version=options.model.version,
                inputs=inputs,
                outputs=self._outputs,
                request_id=request_id,
                client_timeout=timeout_s if timeout_s is not None else self._default_timeout_s,
            )
        except InferenceServerException as exc:
            raise _domain_error(exc, options) from exc
        return _detections(result, options)


def _tensor(name: str, value: np.ndarray[Any, Any], datatype: str) -> InferInput:
    tensor = InferInput(name, list(value.shape), datatype)
    tensor.set_data_from_numpy(value)
    return tensor


def _detections(result: Any, options: DetectOptions) -> DetectionResult:
    boxes = result.as_numpy(DetectorTensors.BOXES).reshape(-1, 4)
    scores = result.as_numpy(DetectorTensors.SCORES).reshape(-1)
    class_ids = result.as_numpy(DetectorTensors.CLASS_IDS).reshape(-1)
    labels = result.as_numpy(DetectorTensors.LABELS).reshape(-1)
    height, width = (int(v) for v in result.as_numpy(DetectorTensors.IMAGE_SIZE).reshape(-1)[:2])
    detections = tuple(
        Detection(
            label=label.decode() if isinstance(label, bytes) else str(label),
            class_id=int(class_id),
            score=float(score),
            box=Box(*(float(v) for v in box)),
        )
        for box, score, class_id, label in zip(boxes, scores, class_ids, labels, strict=True)
        if class_id >= 0  # padding rows when Triton answers several images in one request
    )
    return DetectionResult(detections=detections, width=width, height=height, model=options.model)


def _domain_error(exc: InferenceServerException, options: DetectOptions) -> Exception:
    status = str(exc.status() or "")
    message = str(exc.message() or "")
    if status.endswith("NOT_FOUND") or "unknown model" in message or "unknown version" in message:
        field = "options.model.version" if "version" in message else "options.model.name"
        return ModelNotFoundError(options.model, field)
    # yolox_preprocess answers INVALID_ARG "... not a decodable image ..." for bytes it cannot
    # decode; other INVALID_ARGUMENTs would be our own bug (shapes, types) and stay INTERNAL.
    if status.endswith("INVALID_ARGUMENT") and "decodable" in message:
        return InvalidArgumentError.one(
            "IMAGE_DECODE_FAILED", "image.content", "the image could not be decoded"
        )
    if status.endswith("DEADLINE_EXCEEDED"):
        return DeadlineExceededError()
    if status.endswith("UNAVAILABLE"):
        return BackendUnavailableError()
    log.error("triton call failed: status=%s message=%s", status, message)
    return BackendError(f"{status}: {message}")
