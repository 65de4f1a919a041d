"""Triton Python model: decode encoded images and letterbox them for YOLOX-nano.

Output per image: a 3x416x416 float32 BGR tensor (raw 0-255), the letterbox scale, the decoded
(height, width) and IMAGE_STATUS, the structured per-item decode outcome every ensemble of this
repository returns (0 decoded, 1 not decodable). An undecodable image becomes a blank canvas so
the rest of its batch goes on; the postprocess step answers it with no detections.
The numpy/OpenCV work is in module functions so tests can call it.
"""

from __future__ import annotations

import re
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import triton_python_backend_utils as pb_utils

INPUT_SIZE = 416
PAD_VALUE = 114
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




class ImageDecodeError(ValueError):
    """The bytes are not an image OpenCV can decode."""


class ImageTooComplexError(ImageDecodeError):
    """The image exceeds the decode budget (jpeg_too_complex); it is not decoded."""


def decode_image(data: bytes) -> npt.NDArray[np.uint8]:
    """Decode JPEG/PNG/WebP/BMP bytes to an HxWx3 BGR uint8 array (alpha dropped, grey expanded)."""
    buffer = np.frombuffer(data, dtype=np.uint8)
    if buffer.size == 0:
        raise ImageDecodeError("empty image")
    if jpeg_too_complex(data):
        raise ImageTooComplexError("too many JPEG scans")
    try:
        image = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    except cv2.error as err:
        raise ImageDecodeError("not a decodable image") from err
    if image is None or image.ndim != 3 or image.shape[2] != 3:
        raise ImageDecodeError("not a decodable image")
    return image.astype(np.uint8, copy=False)


def letterbox(
    image: npt.NDArray[np.uint8], size: int = INPUT_SIZE
) -> tuple[npt.NDArray[np.float32], float]:
    """Resize keeping the aspect ratio into the top-left of a size x size canvas of 114s.

    Returns the CHW float32 tensor and the scale r, so boxes map back by dividing by r.
    This follows the YOLOX reference preprocessing the network was trained with.
    """
    height, width = image.shape[:2]
    scale = min(size / height, size / width)
    # max(1, ...) only matters for extreme aspect ratios, where int() would give a 0 side.
    new_w, new_h = max(1, int(width * scale)), max(1, int(height * scale))
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    canvas = np.full((size, size, 3), PAD_VALUE, dtype=np.uint8)
    canvas[:new_h, :new_w] = resized
    return canvas.transpose(2, 0, 1).astype(np.float32), scale


def preprocess_batch(
    items: npt.NDArray[np.object_],
) -> tuple[
    npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.int32], npt.NDArray[np.int32]
]:
    """Decode and letterbox every image of one request ([n, 1] object array of bytes).

    Returns the tensors, scales, (height, width) sizes and per-image statuses; an undecodable
    image gets a blank canvas, scale 1, size (0, 0) and STATUS_UNDECODABLE."""
    tensors, scales, sizes, statuses = [], [], [], []
    for item in items.reshape(-1):
        try:
            image = decode_image(bytes(item))
        except ImageDecodeError as err:
            tensors.append(np.full((3, INPUT_SIZE, INPUT_SIZE), PAD_VALUE, dtype=np.float32))
            scales.append([1.0])
            sizes.append((0, 0))
            too_complex = isinstance(err, ImageTooComplexError)
            statuses.append([STATUS_TOO_COMPLEX if too_complex else STATUS_UNDECODABLE])
            continue
        tensor, scale = letterbox(image)
        tensors.append(tensor)
        scales.append([scale])
        sizes.append(image.shape[:2])
        statuses.append([STATUS_OK])
    return (
        np.stack(tensors),
        np.asarray(scales, dtype=np.float32),
        np.asarray(sizes, dtype=np.int32),
        np.asarray(statuses, dtype=np.int32),
    )


class TritonPythonModel:
    """Decodes each request's images; an undecodable image is reported in IMAGE_STATUS."""

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            items = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy()
            images, scales, sizes, statuses = preprocess_batch(items)
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("IMAGES", images),
                        pb_utils.Tensor("SCALE", scales),
                        pb_utils.Tensor("IMAGE_SIZE", sizes),
                        pb_utils.Tensor("IMAGE_STATUS", statuses),
                    ]
                )
            )
        return responses
