"""PP-OCR recognition: line crops cut out and rectified, turned upright by the direction
classifier, resized for the CTC recogniser and read by greedy CTC decoding over the character
set that tools/prepare_models.py writes beside the recogniser (characters.txt)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from triton_models.ocr.detection import normalise

FloatArray = npt.NDArray[np.float32]
ImageArray = npt.NDArray[np.uint8]
CHARACTERS_FILE = "characters.txt"

# Direction classifier: 48x192 input, labels 0 and 180 degrees, rotate above this score.
CLS_HEIGHT, CLS_WIDTH, CLS_ROTATE_THRESHOLD = 48, 192, 0.9
# Recogniser: height 48, width that of the widest line of the call but at least 320.
REC_HEIGHT, REC_MIN_WIDTH = 48, 320


def crop_line(image: ImageArray, box: FloatArray) -> ImageArray:
    """Cut a (possibly rotated) quadrilateral out as an upright rectangle.

    The crop is the box's longer top/bottom edge wide and longer left/right edge high; a crop
    at least 1.5 times taller than wide is a vertical line, turned 90 degrees to lie flat.
    """
    width = int(max(np.linalg.norm(box[0] - box[1]), np.linalg.norm(box[2] - box[3])))
    height = int(max(np.linalg.norm(box[0] - box[3]), np.linalg.norm(box[1] - box[2])))
    target = np.array([[0, 0], [width, 0], [width, height], [0, height]], dtype=np.float32)
    matrix = cv2.getPerspectiveTransform(box.astype(np.float32), target)
    crop = np.asarray(cv2.warpPerspective(
        image, matrix, (width, height), borderMode=cv2.BORDER_REPLICATE, flags=cv2.INTER_CUBIC
    ), dtype=np.uint8)
    if crop.shape[0] >= 1.5 * crop.shape[1]:
        crop = np.ascontiguousarray(np.rot90(crop))
    return crop


def resize_to_height(crop: ImageArray, height: int, max_width: int) -> ImageArray:
    """Scale a crop to the given height keeping its aspect ratio, at most max_width wide."""
    width = min(max_width, int(math.ceil(height * crop.shape[1] / crop.shape[0])))
    resized = cv2.resize(crop, (max(width, 1), height), interpolation=cv2.INTER_LINEAR)
    return np.asarray(resized, dtype=np.uint8)


def padded_batch(crops: Sequence[ImageArray], height: int, width: int) -> FloatArray:
    """Normalised crops resized to `height`, left-aligned on a zero canvas `width` wide."""
    batch = np.zeros((len(crops), 3, height, width), dtype=np.float32)
    for row, crop in enumerate(crops):
        resized = normalise(resize_to_height(crop, height, width))
        batch[row, :, :, : resized.shape[2]] = resized
    return batch


def cls_input(crops: Sequence[ImageArray]) -> FloatArray:
    return padded_batch(crops, CLS_HEIGHT, CLS_WIDTH)


def rec_width(crops: Sequence[ImageArray]) -> int:
    """The recogniser input width for a group: its widest crop at height 48, at least 320."""
    widest = max(crop.shape[1] / crop.shape[0] for crop in crops)
    return int(REC_HEIGHT * max(REC_MIN_WIDTH / REC_HEIGHT, widest))


def rec_input(crops: Sequence[ImageArray]) -> FloatArray:
    return padded_batch(crops, REC_HEIGHT, rec_width(crops))


def turn_upside_down_lines(crops: list[ImageArray], probabilities: FloatArray) -> list[ImageArray]:
    """Rotate by 180 degrees the crops the classifier calls upside down with enough confidence."""
    labels = probabilities.argmax(axis=1)
    return [
        np.asarray(cv2.rotate(crop, cv2.ROTATE_180), dtype=np.uint8)
        if labels[i] == 1 and probabilities[i, 1] > CLS_ROTATE_THRESHOLD
        else crop
        for i, crop in enumerate(crops)
    ]


def read_charset(path: Path) -> list[str]:
    """Index -> character: CTC blank at 0, the model's characters (one a line, as its ONNX
    metadata lists them), then the space PP-OCR appends."""
    return ["", *path.read_text(encoding="utf-8").splitlines(), " "]


def ctc_decode(
    indices: npt.NDArray[np.integer[Any]], probabilities: FloatArray, charset: Sequence[str]
) -> tuple[str, float]:
    """Greedy CTC: merge repeats, drop blanks; confidence = mean probability of kept steps."""
    keep = np.ones(len(indices), dtype=bool)
    keep[1:] = indices[1:] != indices[:-1]
    keep &= indices != 0
    text = "".join(charset[int(i)] for i in indices[keep])
    confidence = float(probabilities[keep].mean()) if keep.any() else 0.0
    return text, confidence
