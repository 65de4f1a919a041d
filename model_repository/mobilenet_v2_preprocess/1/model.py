"""Triton Python model: decode encoded images and prepare them for MobileNetV2 (ImageNet).

Per image, as torchvision's ImageNet evaluation transform does: RGB, shorter side resized to
256, centre crop 224x224, scaled to [0, 1] and normalised by the ImageNet mean/std, CHW float32.
An undecodable image gets IMAGE_STATUS 1, IMAGE_SIZE (0, 0) and a zero tensor, so the rest of
the batch proceeds and the postprocess step returns an empty result for it.
"""

from __future__ import annotations

import re
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import triton_python_backend_utils as pb_utils

RESIZE_SHORTER = 256
CROP = 224
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
# Beyond this aspect ratio the middle of the longer side is cut out before resizing: the 224
# crop only ever sees the middle, and a 1 x 3000 strip would otherwise resize to 256 x 768000.
MAX_ASPECT = 16
STATUS_OK = 0
STATUS_UNDECODABLE = 1
STATUS_TOO_COMPLEX = 2
# Decode budget for progressive JPEGs, the same as the server's header check (server/images.py,
# settings limits.max_jpeg_scans / max_jpeg_scan_pixels): the decoder passes over every block
# once per scan, so a 100 KB file of thousands of empty scans would hold this step for seconds.
# Repeated in each decoding step because Triton loads every model.py on its own; a unit test
# (tests/unit/test_decode_budget.py) keeps the copies in agreement with the server.
MAX_JPEG_SCANS = 100
MAX_JPEG_SCAN_PIXELS = 640_000_000
_JPEG_PROGRESSIVE = (0xC2, 0xC6, 0xCA, 0xCE)
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def jpeg_too_complex(data: bytes) -> bool:
    """True for a progressive JPEG with more scans than its budget; counted without decoding."""
    if not data.startswith(b"\xff\xd8"):
        return False
    pos, n, scans, allowed = 2, len(data), 0, 0
    while pos + 4 <= n and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker == 0xD9:
            break
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker in _JPEG_PROGRESSIVE and pos + 9 <= n:
            height = int.from_bytes(data[pos + 5 : pos + 7], "big")
            width = int.from_bytes(data[pos + 7 : pos + 9], "big")
            allowed = max(1, min(MAX_JPEG_SCANS, MAX_JPEG_SCAN_PIXELS // max(1, width * height)))
        pos += 2 + length
        if marker == 0xDA:
            if not allowed:  # a sequential frame: one pass per component
                return False
            scans += 1
            if scans > allowed:
                return True
            found = _JPEG_MARKER.search(data, pos)
            if found is None:
                break
            pos = found.start()
    return False




def decode_image(data: bytes) -> npt.NDArray[np.uint8] | None:
    """Decode JPEG/PNG/WebP/BMP bytes to HxWx3 BGR uint8 (EXIF orientation applied); None if
    the bytes are not a decodable image."""
    buffer = np.frombuffer(data, dtype=np.uint8)
    if buffer.size == 0:
        return None
    try:
        image = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    except cv2.error:
        return None
    if image is None or image.ndim != 3 or image.shape[2] != 3 or image.size == 0:
        return None
    return image.astype(np.uint8, copy=False)


def resized_shape(height: int, width: int, shorter: int = RESIZE_SHORTER) -> tuple[int, int]:
    """(height, width) with the shorter side set to `shorter`; the longer side is truncated,
    as torchvision's Resize(int) computes it."""
    if height <= width:
        return shorter, max(1, int(shorter * width / height))
    return max(1, int(shorter * height / width)), shorter


def resize_and_crop(
    image: npt.NDArray[np.uint8], shorter: int = RESIZE_SHORTER, crop: int = CROP
) -> npt.NDArray[np.uint8]:
    """Shorter side to `shorter`, then the centre crop x crop (offsets rounded as torchvision's
    CenterCrop does)."""
    height, width = image.shape[:2]
    longest = min(height, width) * MAX_ASPECT
    if height > longest:
        top = (height - longest) // 2
        image, height = image[top : top + longest], longest
    elif width > longest:
        left = (width - longest) // 2
        image, width = image[:, left : left + longest], longest
    new_h, new_w = resized_shape(height, width, shorter)
    # INTER_AREA averages the source pixels when shrinking, as torchvision's antialiased
    # bilinear resize does; when enlarging it would degrade towards nearest, so use bilinear.
    shrinking = new_h * new_w < height * width
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    resized = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
    top = int(round((new_h - crop) / 2.0))
    left = int(round((new_w - crop) / 2.0))
    return resized[top : top + crop, left : left + crop]


def normalise(bgr: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """BGR uint8 HxWx3 to the network's RGB, mean/std-normalised CHW float32."""
    rgb = bgr[:, :, ::-1].astype(np.float32) / np.float32(255.0)
    return ((rgb - MEAN) / STD).transpose(2, 0, 1).astype(np.float32)


def preprocess_batch(
    items: npt.NDArray[np.object_],
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int32], npt.NDArray[np.int32]]:
    """Tensors, (height, width) and status for every image of one request ([n, 1] bytes)."""
    flat = items.reshape(-1)
    tensors = np.zeros((len(flat), 3, CROP, CROP), dtype=np.float32)
    sizes = np.zeros((len(flat), 2), dtype=np.int32)
    statuses = np.full((len(flat), 1), STATUS_UNDECODABLE, dtype=np.int32)
    for index, item in enumerate(flat):
        data = bytes(item)
        if jpeg_too_complex(data):
            statuses[index, 0] = STATUS_TOO_COMPLEX
            continue
        image = decode_image(data)
        if image is None:
            continue
        tensors[index] = normalise(resize_and_crop(image))
        sizes[index] = image.shape[:2]
        statuses[index, 0] = STATUS_OK
    return tensors, sizes, statuses


class TritonPythonModel:
    """Prepares every image of every request; a bad image is flagged, never an error."""

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            items = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy()
            tensors, sizes, statuses = preprocess_batch(items)
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("IMAGES", tensors),
                        pb_utils.Tensor("IMAGE_SIZE", sizes),
                        pb_utils.Tensor("IMAGE_STATUS", statuses),
                    ]
                )
            )
        return responses
