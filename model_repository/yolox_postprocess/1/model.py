"""Triton Python model: turn raw YOLOX-nano outputs into scored, labelled boxes.

Decodes the stride 8/16/32 grids, scores each anchor by objectness x best class score, keeps
those above the threshold, runs per-class NMS and maps boxes back to the decoded image.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import triton_python_backend_utils as pb_utils

INPUT_SIZE = 416
STATUS_OK = 0  # IMAGE_STATUS of an image yolox_preprocess decoded; others get no detections
STRIDES = (8, 16, 32)

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Detections:
    """One image's detections, sorted by score descending."""

    boxes: FloatArray  # [k, 4] x1, y1, x2, y2 in pixels of the decoded image
    scores: FloatArray  # [k]
    class_ids: npt.NDArray[np.int32]  # [k]


def make_grids(
    size: int = INPUT_SIZE, strides: tuple[int, ...] = STRIDES
) -> tuple[FloatArray, FloatArray]:
    """Per-anchor (x, y) grid cell and stride, in the order the network emits anchors."""
    grids, anchor_strides = [], []
    for stride in strides:
        cells = size // stride
        xs, ys = np.meshgrid(np.arange(cells), np.arange(cells))
        grids.append(np.stack((xs, ys), axis=2).reshape(-1, 2))
        anchor_strides.append(np.full((cells * cells, 1), stride))
    return (
        np.concatenate(grids).astype(np.float32),
        np.concatenate(anchor_strides).astype(np.float32),
    )


GRIDS, ANCHOR_STRIDES = make_grids()


def decode_predictions(
    raw: FloatArray, grids: FloatArray = GRIDS, strides: FloatArray = ANCHOR_STRIDES
) -> tuple[FloatArray, FloatArray, npt.NDArray[np.int32]]:
    """Decode one image's [anchors, 85] output to corner boxes, best-class scores and classes.

    Boxes are in letterboxed-input pixels: centre = (xy + grid) * stride, size = exp(wh) * stride.
    """
    centres = (raw[:, :2] + grids) * strides
    sizes = np.exp(raw[:, 2:4]) * strides
    boxes = np.concatenate((centres - sizes / 2, centres + sizes / 2), axis=1)
    class_scores = raw[:, 5:] * raw[:, 4:5]
    class_ids = class_scores.argmax(axis=1).astype(np.int32)
    scores = class_scores[np.arange(len(raw)), class_ids]
    return boxes.astype(np.float32), scores.astype(np.float32), class_ids


def nms(boxes: FloatArray, scores: FloatArray, iou_threshold: float) -> npt.NDArray[np.intp]:
    """Greedy non-maximum suppression; indices of the kept boxes, best score first."""
    x1, y1, x2, y2 = boxes.T
    areas = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    order = scores.argsort(kind="stable")[::-1]
    keep = []
    while order.size > 0:
        best, rest = order[0], order[1:]
        keep.append(best)
        width = np.clip(np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]), 0, None)
        height = np.clip(np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]), 0, None)
        inter = width * height
        union = areas[best] + areas[rest] - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.intp)


def per_class_nms(
    boxes: FloatArray, scores: FloatArray, class_ids: npt.NDArray[np.int32], iou_threshold: float
) -> npt.NDArray[np.intp]:
    """NMS within each class only, so overlapping objects of different classes both survive."""
    kept = [np.zeros(0, dtype=np.intp)]
    for cls in np.unique(class_ids):
        members = np.flatnonzero(class_ids == cls)
        kept.append(members[nms(boxes[members], scores[members], iou_threshold)])
    indices = np.concatenate(kept)
    return indices[scores[indices].argsort(kind="stable")[::-1]]


def to_image_space(
    boxes: FloatArray, scale: float, image_height: int, image_width: int
) -> FloatArray:
    """Undo the letterbox (top-left placement, so only a scale) and clip to the image."""
    mapped = boxes / np.float32(scale)
    mapped[:, 0::2] = np.clip(mapped[:, 0::2], 0, image_width)
    mapped[:, 1::2] = np.clip(mapped[:, 1::2], 0, image_height)
    return mapped.astype(np.float32)


def postprocess_image(
    raw: FloatArray,
    scale: float,
    image_height: int,
    image_width: int,
    score_threshold: float,
    iou_threshold: float,
) -> Detections:
    """Full postprocessing of one image's raw network output."""
    boxes, scores, class_ids = decode_predictions(raw)
    mask = scores > score_threshold
    boxes, scores, class_ids = boxes[mask], scores[mask], class_ids[mask]
    keep = per_class_nms(boxes, scores, class_ids, iou_threshold)
    return Detections(
        boxes=to_image_space(boxes[keep], scale, image_height, image_width),
        scores=scores[keep],
        class_ids=class_ids[keep],
    )


NO_DETECTIONS = Detections(
    boxes=np.zeros((0, 4), np.float32),
    scores=np.zeros(0, np.float32),
    class_ids=np.zeros(0, np.int32),
)


def check_threshold(name: str, value: float) -> float:
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return value


def pack_detections(
    results: list[Detections], labels: list[str]
) -> tuple[FloatArray, FloatArray, npt.NDArray[np.int32], npt.NDArray[np.object_]]:
    """Stack one request's images into [n, k, ...] tensors, k = the longest detection list.

    Shorter lists are padded with zero boxes, score 0, class -1 and label "" (a request carries
    one image in the usual case, and then nothing is padded).
    """
    count = len(results)
    longest = max((len(result.scores) for result in results), default=0)
    boxes = np.zeros((count, longest, 4), dtype=np.float32)
    scores = np.zeros((count, longest), dtype=np.float32)
    class_ids = np.full((count, longest), -1, dtype=np.int32)
    names = np.full((count, longest), b"", dtype=np.object_)
    for row, result in enumerate(results):
        k = len(result.scores)
        boxes[row, :k] = result.boxes
        scores[row, :k] = result.scores
        class_ids[row, :k] = result.class_ids
        names[row, :k] = [labels[int(cls)].encode() for cls in result.class_ids]
    return boxes, scores, class_ids, names


def read_input(request: Any, name: str) -> Any:
    return pb_utils.get_input_tensor_by_name(request, name).as_numpy()


def read_labels(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


class TritonPythonModel:
    """Postprocesses every image of every request; bad thresholds fail only their request."""

    def initialize(self, args: dict[str, str]) -> None:
        self.labels = read_labels(Path(args["model_repository"]) / "labels.txt")
        num_classes = json.loads(args["model_config"])["input"][0]["dims"][1] - 5
        if len(self.labels) != num_classes:
            raise pb_utils.TritonModelException(
                f"labels.txt has {len(self.labels)} names, the network {num_classes} classes"
            )

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            predictions = read_input(request, "PREDICTIONS")
            scales, sizes = read_input(request, "SCALE"), read_input(request, "IMAGE_SIZE")
            statuses = read_input(request, "IMAGE_STATUS")
            score_thresholds = read_input(request, "SCORE_THRESHOLD")
            iou_thresholds = read_input(request, "IOU_THRESHOLD")
            try:
                results = [
                    postprocess_image(
                        predictions[i],
                        float(scales[i, 0]),
                        int(sizes[i, 0]),
                        int(sizes[i, 1]),
                        check_threshold("SCORE_THRESHOLD", float(score_thresholds[i, 0])),
                        check_threshold("IOU_THRESHOLD", float(iou_thresholds[i, 0])),
                    )
                    if statuses[i, 0] == STATUS_OK
                    else NO_DETECTIONS
                    for i in range(len(predictions))
                ]
            except ValueError as err:
                error = pb_utils.TritonError(str(err), pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            boxes, scores, class_ids, names = pack_detections(results, self.labels)
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("BOXES", boxes),
                        pb_utils.Tensor("SCORES", scores),
                        pb_utils.Tensor("CLASS_IDS", class_ids),
                        pb_utils.Tensor("LABELS", names),
                    ]
                )
            )
        return responses
