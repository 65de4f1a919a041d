"""The face adapter: the tensors of the face models (model_repository/yunet_mobilefacenet:
detection, 5-point alignment and identity embedding in Triton) and their outputs as faces."""

from __future__ import annotations

import numpy as np

from server.domain import Box, Face, FaceOptions, FacesResult, ModelRef, Point
from server.triton.calls import Array, TritonCalls, scalar
from server.triton.tensors import IMAGE, IMAGE_SIZE, IMAGE_STATUS, ModelTensors, TensorSpec

SCORE_THRESHOLD = "SCORE_THRESHOLD"
INCLUDE_EMBEDDINGS = "INCLUDE_EMBEDDINGS"
BOXES = "BOXES"  # x1, y1, x2, y2, pixels of the decoded image
SCORES = "SCORES"  # a negative score marks padding rows of a multi-image request
LANDMARKS = "LANDMARKS"  # 5 × (x, y): right eye, left eye, nose tip, right/left mouth corner
EMBEDDINGS = "EMBEDDINGS"  # one L2-normalised row per face; no rows unless asked for


def tensors(dimension: int) -> ModelTensors:
    return ModelTensors(
        inputs=(
            TensorSpec(IMAGE, "BYTES", (1,)),
            TensorSpec(SCORE_THRESHOLD, "FP32", (1,)),
            TensorSpec(INCLUDE_EMBEDDINGS, "BOOL", (1,)),
        ),
        outputs=(
            TensorSpec(BOXES, "FP32", (-1, 4)),
            TensorSpec(SCORES, "FP32", (-1,)),
            TensorSpec(LANDMARKS, "FP32", (-1, 10)),
            TensorSpec(EMBEDDINGS, "FP32", (-1, dimension)),
            TensorSpec(IMAGE_SIZE, "INT32", (2,)),
            TensorSpec(IMAGE_STATUS, "INT32", (1,)),
        ),
    )


class TritonFaceDetector:
    def __init__(self, calls: TritonCalls, dimension: int) -> None:
        self._calls = calls
        self._tensors = tensors(dimension)
        self._dimension = dimension

    async def detect_faces(self, content: bytes, options: FaceOptions, request_id: str,
                           timeout_s: float | None) -> FacesResult:
        outputs = await self._calls.infer(
            options.model, self._tensors,
            {IMAGE: scalar(content, np.object_),
             SCORE_THRESHOLD: scalar(options.score_threshold, np.float32),
             INCLUDE_EMBEDDINGS: scalar(options.include_embeddings, np.bool_)},
            request_id, timeout_s)
        return self._result(outputs, options, self._calls.served(options.model))

    def _result(self, outputs: dict[str, Array], options: FaceOptions, model: ModelRef
                ) -> FacesResult:
        height, width = (int(v) for v in outputs[IMAGE_SIZE].reshape(-1)[:2])
        boxes = outputs[BOXES].reshape(-1, 4)
        scores = outputs[SCORES].reshape(-1)
        landmarks = outputs[LANDMARKS].reshape(-1, 5, 2)
        embeddings = outputs[EMBEDDINGS].reshape(-1, self._dimension)
        faces = tuple(
            Face(
                box=Box(*(float(v) for v in boxes[i])),
                score=float(scores[i]),
                landmarks=tuple(Point(float(x), float(y)) for x, y in landmarks[i]),
                embedding=(tuple(embeddings[i].tolist())
                           if options.include_embeddings and i < len(embeddings) else None),
            )
            for i in range(len(scores)) if scores[i] >= 0
        )
        return FacesResult(faces=faces, width=width, height=height, model=model)
