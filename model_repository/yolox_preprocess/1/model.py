"""Triton Python model: decode encoded images and letterbox them for YOLOX-nano.

Output per image: a 3x416x416 float32 BGR tensor (raw 0-255), the letterbox scale, the decoded
(height, width) and IMAGE_STATUS, the structured per-item decode outcome every ensemble of this
repository returns (0 decoded, 1 not decodable). An undecodable image becomes a blank canvas so
the rest of its batch goes on; the postprocess step answers it with no detections.
The numpy/OpenCV work is in module functions so tests can call it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import triton_python_backend_utils as pb_utils

# The decode budget is one file linked into each decoding step's folder (decode_budget.py). Triton
# loads model.py on its own, so its folder is put on the import path here, for tests alike.
sys.path.insert(0, str(Path(__file__).parent))
from decode_budget import (  # noqa: E402
    STATUS_OK,
    STATUS_TOO_COMPLEX,
    STATUS_UNDECODABLE,
    jpeg_too_complex,
    png_chunks_broken,
)

INPUT_SIZE = 416
PAD_VALUE = 114


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
    if png_chunks_broken(data):
        raise ImageDecodeError("a PNG chunk runs past the end of the data")
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
