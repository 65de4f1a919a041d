"""The detection adapter: the tensors of the detection ensembles (model_repository/yolox_nano)
and their outputs shaped into domain detections."""

from __future__ import annotations

import numpy as np

from server.domain import Box, Detection, DetectionResult, DetectOptions, ModelRef
from server.triton.calls import Array, Inference, scalar
from server.triton.tensors import IMAGE, IMAGE_SIZE, IMAGE_STATUS, ModelTensors, TensorSpec

SCORE_THRESHOLD = "SCORE_THRESHOLD"
IOU_THRESHOLD = "IOU_THRESHOLD"
BOXES = "BOXES"  # x1, y1, x2, y2 in pixels of the decoded image
SCORES = "SCORES"
CLASS_IDS = "CLASS_IDS"  # -1 marks padding rows of a multi-image request
LABELS = "LABELS"

TENSORS = ModelTensors(
    inputs=(
        TensorSpec(IMAGE, "BYTES", (1,)),
        TensorSpec(SCORE_THRESHOLD, "FP32", (1,)),
        TensorSpec(IOU_THRESHOLD, "FP32", (1,)),
    ),
    outputs=(
        TensorSpec(BOXES, "FP32", (-1, 4)),
        TensorSpec(SCORES, "FP32", (-1,)),
        TensorSpec(CLASS_IDS, "INT32", (-1,)),
        TensorSpec(LABELS, "BYTES", (-1,)),
        TensorSpec(IMAGE_SIZE, "INT32", (2,)),
        TensorSpec(IMAGE_STATUS, "INT32", (1,)),
    ),
)


class TritonDetector:
    """Runs a detection model on Triton for one image."""

    def __init__(self, calls: Inference) -> None:
        self._calls = calls

    async def detect(
        self, content: bytes, options: DetectOptions, request_id: str, timeout_s: float | None
    ) -> DetectionResult:
        outputs = await self._calls.infer(
            options.model,
            TENSORS,
            {
                IMAGE: scalar(content, np.object_),
                SCORE_THRESHOLD: scalar(options.score_threshold, np.float32),
                IOU_THRESHOLD: scalar(options.iou_threshold, np.float32),
            },
            request_id,
            timeout_s,
        )
        return _detections(outputs, self._calls.served(options.model))


def _detections(outputs: dict[str, Array], model: ModelRef) -> DetectionResult:
    # Python lists first: converting numpy scalars one by one costs more than the rest of this.
    boxes = outputs[BOXES].reshape(-1, 4).tolist()
    scores = outputs[SCORES].reshape(-1).tolist()
    class_ids = outputs[CLASS_IDS].reshape(-1).tolist()
    labels = outputs[LABELS].reshape(-1).tolist()
    height, width = outputs[IMAGE_SIZE].reshape(-1)[:2].tolist()
    detections = tuple(
        Detection(
            label=label.decode() if isinstance(label, bytes) else str(label),
            class_id=class_id,
            score=score,
            box=Box(*box),
        )
        for box, score, class_id, label in zip(boxes, scores, class_ids, labels, strict=True)
        if class_id >= 0
    )
    return DetectionResult(detections=detections, width=width, height=height, model=model)
