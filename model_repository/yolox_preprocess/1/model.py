"""Triton Python model, first step of the yolox_nano ensemble (config.pbtxt): decode encoded
images and letterbox them for YOLOX-nano (triton_models.yolox.preprocess_batch).

Output per image: a 3x416x416 float32 BGR tensor (raw 0-255), the letterbox scale, the decoded
(height, width) and IMAGE_STATUS, the per-item decode outcome every entry model returns.
"""

from __future__ import annotations

from typing import Any

import triton_python_backend_utils as pb_utils

from triton_models.serving import read_input
from triton_models.yolox import preprocess_batch


class TritonPythonModel:
    """Decodes each request's images; an undecodable image is reported in IMAGE_STATUS."""

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            images, scales, sizes, statuses = preprocess_batch(
                read_input(pb_utils, request, "IMAGE"))
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("IMAGES", images), pb_utils.Tensor("SCALE", scales),
                pb_utils.Tensor("IMAGE_SIZE", sizes),
                pb_utils.Tensor("IMAGE_STATUS", statuses)]))
        return responses
