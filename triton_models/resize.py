"""Resize policies, one per network, each as that network was trained or evaluated upstream.

- YOLOX: `letterbox`, as `preproc` in YOLOX's own repository (yolox/data/data_augment.py):
  aspect kept, `cv2.resize` bilinear, top-left on a canvas of 114s, no normalisation.
- MobileNetV2 (torchvision ImageNet weights): `shorter_side_centre_crop`, as torchvision's
  evaluation transform `Resize(256)` + `CenterCrop(224)` on a PIL image: bilinear WITH
  antialiasing (Pillow's resampling: a triangle filter widened by the shrink factor), so a
  1920 px photo is averaged, not sampled, on its way down to 256.
- YuNet: `pad_to_multiple`, as OpenCV's FaceDetectorYN runs it: the image at its own size,
  zero-padded at the bottom and right to multiples of 32 (the caller sets the input size; the
  detector never resizes). Only photos beyond a bound are shrunk first (`shrink_to_fit`).
- PP-OCR (DB detector): `multiple_of_32`, as RapidOCR's/PaddleOCR's DetResizeForTest with
  limit_type "min": `cv2.resize` bilinear to sides rounded to multiples of 32.
"""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

UInt8Image = npt.NDArray[np.uint8]
FloatArray = npt.NDArray[np.float32]

YOLOX_PAD_VALUE = 114


def letterbox(image: UInt8Image, size: int) -> tuple[FloatArray, float]:
    """The CHW float32 (BGR, 0-255) size x size input and the scale r (boxes map back by / r)."""
    height, width = image.shape[:2]
    scale = min(size / height, size / width)
    # max(1, ...) only matters for extreme aspect ratios, where int() would give a 0 side.
    new_w, new_h = max(1, int(width * scale)), max(1, int(height * scale))
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    canvas = np.full((size, size, 3), YOLOX_PAD_VALUE, dtype=np.uint8)
    canvas[:new_h, :new_w] = resized
    return canvas.transpose(2, 0, 1).astype(np.float32), scale


def _bilinear_taps(
    in_size: int, out_size: int
) -> tuple[npt.NDArray[np.intp], FloatArray]:
    """Per output pixel, the input pixels and weights of Pillow's antialiased bilinear filter:
    a triangle whose support grows with the shrink factor (libImaging/Resample.c)."""
    scale = in_size / out_size
    support = max(scale, 1.0)
    centres = (np.arange(out_size) + 0.5) * scale
    first = np.maximum((centres - support + 0.5).astype(np.intp), 0)
    last = np.minimum((centres + support + 0.5).astype(np.intp), in_size)
    taps = first[:, None] + np.arange(int(np.ceil(support)) * 2 + 1)
    weights = np.maximum(0.0, 1.0 - np.abs((taps - centres[:, None] + 0.5) / support))
    weights[taps >= last[:, None]] = 0.0
    weights /= weights.sum(axis=1, keepdims=True)
    return np.minimum(taps, in_size - 1), weights.astype(np.float32)


def _resample_axis(image: UInt8Image, taps: npt.NDArray[np.intp], weights: FloatArray,
                   axis: int) -> UInt8Image:
    """One separable pass along `axis`, rounded to uint8 as Pillow rounds between passes."""
    total = np.zeros(
        image.shape[:axis] + (len(taps),) + image.shape[axis + 1 :], dtype=np.float32
    )
    shape = [1] * image.ndim
    shape[axis] = len(taps)
    for k in range(taps.shape[1]):
        total += weights[:, k].reshape(shape) * np.take(image, taps[:, k], axis=axis)
    return np.clip(np.rint(total), 0, 255).astype(np.uint8)


def antialiased_resize_crop(
    image: UInt8Image, size_hw: tuple[int, int], box: tuple[int, int, int, int]
) -> UInt8Image:
    """The (top, left, height, width) `box` of `image` resized to `size_hw` with Pillow's
    BILINEAR filter; only the box's pixels are computed. The vertical pass runs first (Pillow
    runs the horizontal one first): whole rows are gathered, several times faster than columns,
    and the order changes no pixel by more than one level."""
    top, left, height, width = box
    rows, row_weights = _bilinear_taps(image.shape[0], size_hw[0])
    cols, col_weights = _bilinear_taps(image.shape[1], size_hw[1])
    rows, row_weights = rows[top : top + height], row_weights[top : top + height]
    cols, col_weights = cols[left : left + width], col_weights[left : left + width]
    first, last = int(cols.min()), int(cols.max()) + 1  # the columns the box reads
    short = _resample_axis(image[:, first:last], rows, row_weights, axis=0)
    return _resample_axis(short, cols - first, col_weights, axis=1)


def shorter_side_centre_crop(image: UInt8Image, shorter: int, crop: int) -> UInt8Image:
    """torchvision's Resize(shorter) (longer side truncated) then CenterCrop(crop), offsets
    rounded as CenterCrop rounds them; antialiased as on a PIL image."""
    height, width = image.shape[:2]
    if height <= width:
        new_h, new_w = shorter, max(1, int(shorter * width / height))
    else:
        new_h, new_w = max(1, int(shorter * height / width)), shorter
    top = int(round((new_h - crop) / 2.0))
    left = int(round((new_w - crop) / 2.0))
    return antialiased_resize_crop(image, (new_h, new_w), (top, left, crop, crop))


def shrink_to_fit(image: UInt8Image, max_side: int) -> tuple[UInt8Image, float]:
    """The image with its longer side at most max_side (area-averaged), and the scale used."""
    height, width = image.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    if scale < 1.0:
        new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
        image = np.asarray(
            cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA), dtype=np.uint8
        )
    return image, scale


def pad_to_multiple(image: UInt8Image, divisor: int) -> FloatArray:
    """CHW float32 (BGR, 0-255) with the image at the top-left and zero padding up to
    multiples of `divisor`, as FaceDetectorYN pads its input."""
    height, width = image.shape[:2]
    padded_h, padded_w = -(-height // divisor) * divisor, -(-width // divisor) * divisor
    tensor = np.zeros((3, padded_h, padded_w), dtype=np.float32)
    tensor[:, :height, :width] = image.transpose(2, 0, 1)
    return tensor


def round_to_32(value: float) -> int:
    return int(round(value / 32) * 32)


def multiple_of_32(image: UInt8Image, height: int, width: int) -> UInt8Image:
    """Bilinear resize to (height, width) rounded to multiples of 32 (at least 32)."""
    size = (max(32, round_to_32(width)), max(32, round_to_32(height)))
    return np.asarray(cv2.resize(image, size, interpolation=cv2.INTER_LINEAR), dtype=np.uint8)
