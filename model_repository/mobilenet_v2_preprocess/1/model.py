"""Triton Python model: decode encoded images and prepare them for MobileNetV2 (ImageNet).

Per image, as torchvision's ImageNet evaluation transform does: RGB, shorter side resized to
256, centre crop 224x224, scaled to [0, 1] and normalised by the ImageNet mean/std, CHW float32.
An undecodable image gets IMAGE_STATUS 1, IMAGE_SIZE (0, 0) and a zero tensor, so the rest of
the batch proceeds and the postprocess step returns an empty result for it.
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

from triton_models.resize import shorter_side_centre_crop  # noqa: E402

RESIZE_SHORTER = 256
CROP = 224
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
# Beyond this aspect ratio the middle of the longer side is cut out before resizing: the 224
# crop only ever sees the middle, and a 1 x 3000 strip would otherwise resize to 256 x 768000.
MAX_ASPECT = 16


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


def resize_and_crop(
    image: npt.NDArray[np.uint8], shorter: int = RESIZE_SHORTER, crop: int = CROP
) -> npt.NDArray[np.uint8]:
    """Shorter side to `shorter`, then the centre crop x crop, antialiased as the network's
    ImageNet evaluation ran (triton_models.resize.shorter_side_centre_crop)."""
    height, width = image.shape[:2]
    longest = min(height, width) * MAX_ASPECT
    if height > longest:
        top = (height - longest) // 2
        image = image[top : top + longest]
    elif width > longest:
        left = (width - longest) // 2
        image = image[:, left : left + longest]
    return shorter_side_centre_crop(image, shorter, crop)


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
        if png_chunks_broken(data):
            continue  # STATUS_UNDECODABLE
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
