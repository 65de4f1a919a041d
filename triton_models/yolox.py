"""YOLOX-nano: its input (decode, letterbox) and its output (grid decoding, score threshold,
per-class NMS, boxes mapped back to the decoded image), as YOLOX's own demo computes them.

An undecodable image becomes a blank canvas so the rest of its batch goes on; it is answered
with no detections.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from triton_models.images import STATUS_OK, decode
from triton_models.nms import per_class_nms
from triton_models.resize import YOLOX_PAD_VALUE, letterbox

INPUT_SIZE = 416
NUM_CLASSES = 80  # COCO
STRIDES = (8, 16, 32)

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Detections:
    """One image's detections, sorted by score descending."""

    boxes: FloatArray  # [k, 4] x1, y1, x2, y2 in pixels of the decoded image
    scores: FloatArray  # [k]
    class_ids: npt.NDArray[np.int32]  # [k]


NO_DETECTIONS = Detections(
    boxes=np.zeros((0, 4), np.float32),
    scores=np.zeros(0, np.float32),
    class_ids=np.zeros(0, np.int32),
)


def preprocess_batch(
    items: npt.NDArray[np.object_],
) -> tuple[
    npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.int32], npt.NDArray[np.int32]
]:
    """Decode and letterbox every image of one request ([n, 1] object array of bytes).

    Returns the tensors, scales, (height, width) sizes and per-image statuses; an undecodable
    image gets a blank canvas, scale 1, size (0, 0) and its status."""
    tensors, scales, sizes, statuses = [], [], [], []
    for item in items.reshape(-1):
        image, status = decode(bytes(item))
        if image is None:
            tensors.append(np.full((3, INPUT_SIZE, INPUT_SIZE), YOLOX_PAD_VALUE, np.float32))
            scales.append([1.0])
            sizes.append((0, 0))
        else:
            tensor, scale = letterbox(image, INPUT_SIZE)
            tensors.append(tensor)
            scales.append([scale])
            sizes.append(image.shape[:2])
        statuses.append([status])
    return (
        np.stack(tensors),
        np.asarray(scales, dtype=np.float32),
        np.asarray(sizes, dtype=np.int32),
        np.asarray(statuses, dtype=np.int32),
    )


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


def postprocess_rows(
    predictions: FloatArray, scales: FloatArray, sizes: npt.NDArray[np.int32],
    statuses: npt.NDArray[np.int32], score_thresholds: FloatArray, iou_thresholds: FloatArray,
) -> list[Detections]:
    """Every image's detections (thresholds checked); an image not decoded has none."""
    return [
        postprocess_image(
            predictions[i], float(scales[i, 0]), int(sizes[i, 0]), int(sizes[i, 1]),
            check_threshold("SCORE_THRESHOLD", float(score_thresholds[i])),
            check_threshold("IOU_THRESHOLD", float(iou_thresholds[i])),
        )
        if statuses[i, 0] == STATUS_OK else NO_DETECTIONS
        for i in range(len(predictions))
    ]


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
