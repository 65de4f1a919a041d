"""The OCR adapter: the tensors of the OCR models (model_repository/ppocr_v6: text detection,
direction and recognition in Triton) and their outputs as text lines in reading order."""

from __future__ import annotations

import numpy as np

from server.domain import ModelRef, OcrOptions, OcrResult, Point, TextLine
from server.triton.calls import Array, TritonCalls, scalar
from server.triton.tensors import IMAGE, IMAGE_SIZE, IMAGE_STATUS, ModelTensors, TensorSpec

TEXTS = "TEXTS"  # one per line, reading order
CONFIDENCES = "CONFIDENCES"  # a negative confidence marks padding rows of a multi-image request
POLYGONS = "POLYGONS"  # 4 × (x, y), clockwise from the text's top-left, decoded-image pixels

TENSORS = ModelTensors(
    inputs=(TensorSpec(IMAGE, "BYTES", (1,)),),
    outputs=(
        TensorSpec(TEXTS, "BYTES", (-1,)),
        TensorSpec(CONFIDENCES, "FP32", (-1,)),
        TensorSpec(POLYGONS, "FP32", (-1, 8)),
        TensorSpec(IMAGE_SIZE, "INT32", (2,)),
        TensorSpec(IMAGE_STATUS, "INT32", (1,)),
    ),
)


class TritonTextReader:
    def __init__(self, calls: TritonCalls) -> None:
        self._calls = calls

    async def read_text(self, content: bytes, options: OcrOptions, request_id: str,
                        timeout_s: float | None) -> OcrResult:
        outputs = await self._calls.infer(
            options.model, TENSORS, {IMAGE: scalar(content, np.object_)}, request_id, timeout_s)
        return _result(outputs, self._calls.served(options.model))


def _result(outputs: dict[str, Array], model: ModelRef) -> OcrResult:
    height, width = (int(v) for v in outputs[IMAGE_SIZE].reshape(-1)[:2])
    polygons = outputs[POLYGONS].reshape(-1, 4, 2)
    lines = tuple(
        TextLine(
            text=text.decode() if isinstance(text, bytes) else str(text),
            confidence=float(confidence),
            polygon=(_point(polygon[0]), _point(polygon[1]), _point(polygon[2]),
                     _point(polygon[3])),
        )
        for text, confidence, polygon in zip(outputs[TEXTS].reshape(-1),
                                             outputs[CONFIDENCES].reshape(-1), polygons,
                                             strict=True)
        if confidence >= 0
    )
    return OcrResult(lines=lines, width=width, height=height, model=model)


def _point(xy: Array) -> Point:
    return Point(float(xy[0]), float(xy[1]))
