"""DB post-processing of PP-OCR's text detector: its probability map to text boxes, with the
constants and steps of RapidOCR 3.10 (PaddleOCR's DBPostProcess), so both find the same boxes."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import pyclipper  # type: ignore[import-untyped]

FloatArray = npt.NDArray[np.float32]

# DB post-processing: pixel threshold, mean box score, candidates, expansion, min box side.
DB_THRESHOLD, DB_BOX_THRESHOLD, DB_MAX_CANDIDATES = 0.3, 0.5, 1000
DB_UNCLIP_RATIO, DB_MIN_SIZE = 1.6, 3


def mini_box(points: npt.NDArray[Any]) -> tuple[FloatArray, float]:
    """The minimum-area rectangle around points, corners from the top-left clockwise, and its
    shorter side."""
    rect = cv2.minAreaRect(points.reshape(-1, 1, 2).astype(np.float32))
    corners = sorted(cv2.boxPoints(rect).tolist(), key=lambda p: p[0])
    left = sorted(corners[:2], key=lambda p: p[1])
    right = sorted(corners[2:], key=lambda p: p[1])
    box = np.array([left[0], right[0], right[1], left[1]], dtype=np.float32)
    return box, float(min(rect[1]))


def box_score(probabilities: FloatArray, box: FloatArray) -> float:
    """Mean probability inside the box polygon (the box's bounding rectangle clipped to the map)."""
    height, width = probabilities.shape
    x_min = int(np.clip(np.floor(box[:, 0].min()), 0, width - 1))
    x_max = int(np.clip(np.ceil(box[:, 0].max()), 0, width - 1))
    y_min = int(np.clip(np.floor(box[:, 1].min()), 0, height - 1))
    y_max = int(np.clip(np.ceil(box[:, 1].max()), 0, height - 1))
    mask = np.zeros((y_max - y_min + 1, x_max - x_min + 1), dtype=np.uint8)
    shifted = (box - np.array([x_min, y_min], dtype=np.float32)).astype(np.int32)
    cv2.fillPoly(mask, list(shifted.reshape(1, -1, 2)), 1)
    return float(cv2.mean(probabilities[y_min : y_max + 1, x_min : x_max + 1], mask)[0])


def unclip(box: FloatArray, ratio: float = DB_UNCLIP_RATIO) -> FloatArray:
    """Offset a box outwards by area * ratio / perimeter, with round corners.

    DB predicts shrunk text kernels; this is the inverse of the shrink it was trained with.
    Clipper does the offset, on whole-pixel coordinates as in PP-OCR: a closed-form rectangle
    offset lands up to a pixel away, and that pixel changes the reading of some lines.
    """
    area = abs(cv2.contourArea(box))
    perimeter = cv2.arcLength(box.reshape(-1, 1, 2), True)
    offset = pyclipper.PyclipperOffset()
    offset.AddPath(box, pyclipper.JT_ROUND, pyclipper.ET_CLOSEDPOLYGON)
    grown = offset.Execute(area * ratio / perimeter if perimeter > 0 else 0.0)
    return np.asarray(grown, dtype=np.float32).reshape(-1, 2)


def order_clockwise(box: FloatArray) -> FloatArray:
    """Corners as top-left, top-right, bottom-right, bottom-left (split by x, then by y)."""
    by_x = box[np.argsort(box[:, 0], kind="stable")]
    left = by_x[:2][np.argsort(by_x[:2, 1], kind="stable")]
    right = by_x[2:][np.argsort(by_x[2:, 1], kind="stable")]
    return np.array([left[0], right[0], right[1], left[1]], dtype=np.float32)


def db_boxes(
    probabilities: FloatArray, dest_height: int, dest_width: int
) -> tuple[FloatArray, FloatArray]:
    """Text boxes from the detector's [H, W] probability map, in pixels of a dest-size image.

    Threshold the map, dilate by 2x2 so touching characters join, take each contour's
    minimum-area rectangle, drop small or low-scoring ones, grow the rest back (unclip), scale
    to the destination, round to whole pixels and clip. Returns [n, 4, 2] boxes (clockwise from
    the top-left) and their [n] scores, in contour order.
    """
    height, width = probabilities.shape
    bitmap = cv2.dilate((probabilities > DB_THRESHOLD).astype(np.uint8), np.ones((2, 2), np.uint8))
    contours, _ = cv2.findContours(bitmap * 255, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    boxes, scores = [], []
    for contour in contours[:DB_MAX_CANDIDATES]:
        points, short_side = mini_box(contour)
        if short_side < DB_MIN_SIZE:
            continue
        score = box_score(probabilities, points)
        if score < DB_BOX_THRESHOLD:
            continue
        expanded = unclip(points)
        if len(expanded) < 3:
            continue
        grown, short_side = mini_box(expanded)
        if short_side < DB_MIN_SIZE + 2:
            continue
        grown[:, 0] = np.clip(np.round(grown[:, 0] / width * dest_width), 0, dest_width)
        grown[:, 1] = np.clip(np.round(grown[:, 1] / height * dest_height), 0, dest_height)
        box = order_clockwise(grown)
        box[:, 0] = np.clip(box[:, 0], 0, dest_width - 1)
        box[:, 1] = np.clip(box[:, 1], 0, dest_height - 1)
        if np.linalg.norm(box[0] - box[1]) < 4 or np.linalg.norm(box[0] - box[3]) < 4:
            continue
        boxes.append(box)
        scores.append(score)
    if not boxes:
        return np.zeros((0, 4, 2), np.float32), np.zeros(0, np.float32)
    return np.stack(boxes), np.asarray(scores, dtype=np.float32)
