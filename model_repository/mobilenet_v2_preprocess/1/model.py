"""Triton Python model, first step of the mobilenet_v2 ensemble (config.pbtxt): decode encoded
images and prepare them as MobileNetV2 was evaluated on ImageNet (triton_models.mobilenet).

An undecodable image gets its IMAGE_STATUS, IMAGE_SIZE (0, 0) and a zero tensor, so the rest of
the batch proceeds and the postprocess step returns an empty result for it.
"""

from __future__ import annotations

from typing import Any

import triton_python_backend_utils as pb_utils

from triton_models.mobilenet import preprocess_batch
from triton_models.serving import read_input


class TritonPythonModel:
    """Prepares every image of every request; a bad image is flagged, never an error."""

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            tensors, sizes, statuses = preprocess_batch(read_input(pb_utils, request, "IMAGE"))
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("IMAGES", tensors), pb_utils.Tensor("IMAGE_SIZE", sizes),
                pb_utils.Tensor("IMAGE_STATUS", statuses)]))
        return responses
