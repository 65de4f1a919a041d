"""Triton Python model: the detection contract answered from the image header alone.

Each image's size comes from its PNG IHDR or JPEG SOF segment; the answer is one "person" box
covering the image with score 1. Bytes that are neither format get IMAGE_STATUS 1 and no box.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (baseline, extended, progressive, lossless, ...); not DHT/JPG/DAC.
SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def image_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) from a PNG or JPEG header; None when the bytes are neither."""
    if data.startswith(PNG_SIGNATURE) and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return height, width
    if not data.startswith(b"\xff\xd8"):
        return None
    offset = 2
    while offset + 4 <= len(data):
        if data[offset] != 0xFF:
            return None
        marker = data[offset + 1]
        if marker == 0xFF:  # fill byte before a marker
            offset += 1
            continue
        length = int.from_bytes(data[offset + 2:offset + 4], "big")
        if marker in SOF_MARKERS and offset + 9 <= len(data):
            height, width = struct.unpack(">HH", data[offset + 5:offset + 9])
            return height, width
        offset += 2 + length
    return None


def answer(images: list[bytes]) -> dict[str, np.ndarray]:
    """One request's output tensors for its images ([n, 1, ...] rows; failed rows padded)."""
    count = len(images)
    boxes = np.zeros((count, 1, 4), dtype=np.float32)
    scores = np.zeros((count, 1), dtype=np.float32)
    class_ids = np.full((count, 1), -1, dtype=np.int32)
    labels = np.full((count, 1), b"", dtype=np.object_)
    sizes = np.zeros((count, 2), dtype=np.int32)
    statuses = np.ones((count, 1), dtype=np.int32)
    for row, data in enumerate(images):
        size = image_size(data)
        if size is None:
            continue
        sizes[row] = size
        statuses[row] = 0
        boxes[row, 0] = (0.0, 0.0, float(size[1]), float(size[0]))
        scores[row, 0] = 1.0
        class_ids[row, 0] = 0
        labels[row, 0] = b"person"
    return {"BOXES": boxes, "SCORES": scores, "CLASS_IDS": class_ids, "LABELS": labels,
            "IMAGE_SIZE": sizes, "IMAGE_STATUS": statuses}


class TritonPythonModel:
    """Stateless: every execute answers each request from its own images."""

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            images = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy().reshape(-1)
            outputs = answer([bytes(image) for image in images])
            responses.append(pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor(name, value) for name, value in outputs.items()]))
        return responses
