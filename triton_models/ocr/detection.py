"""PP-OCR text detection input: the whole image bounded, padded when very flat, and resized
for the DB detector as RapidOCR 3.10 (PaddleOCR's DetResizeForTest, limit_type "min") does,
except that a large photo is shrunk for detection alone to at most `max_side` pixels on its
longer side (the model parameter det_max_side_len): the detector's cost grows with its input's
pixels, while the lines it finds are still cut from the bounded image at full resolution for
recognition."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from triton_models.resize import multiple_of_32, round_to_32

FloatArray = npt.NDArray[np.float32]
ImageArray = npt.NDArray[np.uint8]

# Whole-image bounds before detection (sides rounded to multiples of 32).
MIN_SIDE_LEN, MAX_SIDE_LEN = 30, 2000
# Very flat or very low images get black bands above and below before detection.
PAD_MAX_WIDTH_HEIGHT_RATIO, PAD_MIN_HEIGHT = 8, 30
# The detector sees the image with its shorter side at least this long, sides multiples of 32.
DET_LIMIT_SIDE_LEN = 736
# The detector's input for an image that needs no growth: longer side at most this (rounded to
# 32). Chosen by bench/ocr_input_size.py (bench/REPORT.md, OCR detection input size).
DET_MAX_SIDE_LEN = 1024


@dataclass(frozen=True)
class PreparedImage:
    """The image the detector and the line crops work on, and how to map back from it."""

    image: ImageArray  # bounded and padded BGR image
    top_padding: int
    ratio_h: float  # original pixels per prepared pixel
    ratio_w: float


def bound_image(image: ImageArray) -> tuple[ImageArray, float, float]:
    """Shrink so the longer side is at most 2000, then grow so the shorter is at least 30.

    Each resize rounds both sides to multiples of 32 (at least 32); returns the image and the
    original pixels per resized pixel along y and x.
    """
    ratio_h = ratio_w = 1.0
    for limit, shrink in ((MAX_SIDE_LEN, True), (MIN_SIDE_LEN, False)):
        height, width = image.shape[:2]
        side = max(height, width) if shrink else min(height, width)
        if (side <= limit) if shrink else (side >= limit):
            continue
        scale = limit / side
        image = multiple_of_32(image, int(height * scale), int(width * scale))
        new_h, new_w = image.shape[:2]
        ratio_h, ratio_w = ratio_h * height / new_h, ratio_w * width / new_w
    return image, ratio_h, ratio_w


def pad_vertically(image: ImageArray) -> tuple[ImageArray, int]:
    """Black bands above and below a very flat or very low image; returns the top band height.

    The detector finds the text of a one-line strip more reliably with room above and below it.
    """
    height, width = image.shape[:2]
    if height > PAD_MIN_HEIGHT and width / height <= PAD_MAX_WIDTH_HEIGHT_RATIO:
        return image, 0
    target = max(int(width / PAD_MAX_WIDTH_HEIGHT_RATIO), PAD_MIN_HEIGHT) * 2
    band = int(abs(target - height) / 2)
    padded = cv2.copyMakeBorder(image, band, band, 0, 0, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    return np.asarray(padded, dtype=np.uint8), band


def prepare_image(image: ImageArray) -> PreparedImage:
    bounded, ratio_h, ratio_w = bound_image(image)
    padded, top = pad_vertically(bounded)
    return PreparedImage(padded, top, ratio_h, ratio_w)


def det_input_size(height: int, width: int,
                   max_side: int = DET_MAX_SIDE_LEN) -> tuple[int, int]:
    """The detector's (height, width), multiples of 32: shorter side grown to 736 if below,
    otherwise longer side shrunk to `max_side` if above (growth wins: small text stays
    legible)."""
    if min(height, width) < DET_LIMIT_SIDE_LEN:
        scale = DET_LIMIT_SIDE_LEN / min(height, width)
    else:
        scale = min(1.0, max_side / max(height, width))
    return max(32, round_to_32(int(height * scale))), max(32, round_to_32(int(width * scale)))


def normalise(image: ImageArray) -> FloatArray:
    """HWC BGR 0-255 to CHW float32 in [-1, 1], the scaling every PP-OCR network expects."""
    scaled = image.astype(np.float32) / np.float32(127.5) - np.float32(1.0)
    return np.ascontiguousarray(scaled.transpose(2, 0, 1))


def det_input(image: ImageArray, max_side: int = DET_MAX_SIDE_LEN) -> FloatArray:
    height, width = det_input_size(image.shape[0], image.shape[1], max_side)
    return normalise(multiple_of_32(image, height, width))
