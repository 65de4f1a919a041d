"""Triton Python (BLS) model: faces in encoded images, with 5 landmarks and 128-d embeddings
(triton_models.faces). The networks (yunet_onnx, mobilefacenet_onnx) are called through Triton
on GPU (config.pbtxt) and run in this process on the CPU configuration (configs/cpu.pbtxt,
parameter steps_in_process): a step object chosen once in initialize.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from triton_models.faces import (
    Item,
    check_threshold,
    decode_item,
    detect_all,
    embed_all,
    pack_faces,
)
from triton_models.serving import invalid_argument, read_input
from triton_models.steps import StepError, steps_for


class TritonPythonModel:
    """Faces for every image of every request; a bad threshold fails only its request."""

    def initialize(self, args: dict[str, str]) -> None:
        self.steps = steps_for(args, json.loads(args["model_config"]), pb_utils)

    def execute(self, requests: list[Any]) -> list[Any]:
        items: list[Item] = []
        request_items: list[list[Item] | str] = []  # a request's items, or its error
        for request in requests:
            images, thresholds, include = (
                read_input(pb_utils, request, name).reshape(-1)
                for name in ("IMAGE", "SCORE_THRESHOLD", "INCLUDE_EMBEDDINGS"))
            try:
                checked = [check_threshold(float(value)) for value in thresholds]
            except ValueError as err:
                request_items.append(str(err))
                continue
            mine = [decode_item(bytes(data), threshold, bool(flag))
                    for data, threshold, flag in zip(images, checked, include, strict=True)]
            request_items.append(mine)
            items.extend(mine)
        try:
            detect_all(items, self.steps)
            embed_all(items, self.steps)
        except (StepError, ValueError) as err:
            # A failing step or outputs of an unexpected shape: a server fault, not the input's.
            return [pb_utils.InferenceResponse(error=pb_utils.TritonError(str(err)))
                    for _ in requests]
        return [invalid_argument(pb_utils, mine) if isinstance(mine, str) else respond(mine)
                for mine in request_items]


def respond(items: list[Item]) -> Any:
    boxes, scores, landmarks, embeddings = pack_faces(
        [item.faces for item in items], [item.embeddings for item in items])
    sizes = np.array([item.image.shape[:2] if item.image is not None else (0, 0)
                      for item in items], dtype=np.int32)
    statuses = np.array([[item.status] for item in items], dtype=np.int32)
    return pb_utils.InferenceResponse(output_tensors=[
        pb_utils.Tensor("BOXES", boxes), pb_utils.Tensor("SCORES", scores),
        pb_utils.Tensor("LANDMARKS", landmarks), pb_utils.Tensor("EMBEDDINGS", embeddings),
        pb_utils.Tensor("IMAGE_SIZE", sizes), pb_utils.Tensor("IMAGE_STATUS", statuses)])
