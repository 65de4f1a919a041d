"""Triton Python model, last step of the yolox_nano ensemble (config.pbtxt): raw YOLOX-nano
outputs to scored, labelled boxes in pixels of the decoded image (triton_models.yolox)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import triton_python_backend_utils as pb_utils

from triton_models.serving import invalid_argument, read_input, read_labels
from triton_models.yolox import pack_detections, postprocess_rows


class TritonPythonModel:
    """Postprocesses every image of every request; bad thresholds fail only their request."""

    def initialize(self, args: dict[str, str]) -> None:
        num_classes = json.loads(args["model_config"])["input"][0]["dims"][1] - 5
        self.labels = read_labels(Path(args["model_repository"]) / "labels.txt", num_classes)

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            inputs = [read_input(pb_utils, request, name) for name in (
                "PREDICTIONS", "SCALE", "IMAGE_SIZE", "IMAGE_STATUS")]
            thresholds = [read_input(pb_utils, request, name).reshape(-1)
                          for name in ("SCORE_THRESHOLD", "IOU_THRESHOLD")]
            try:
                results = postprocess_rows(*inputs, *thresholds)
            except ValueError as err:
                responses.append(invalid_argument(pb_utils, str(err)))
                continue
            boxes, scores, class_ids, names = pack_detections(results, self.labels)
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("BOXES", boxes), pb_utils.Tensor("SCORES", scores),
                pb_utils.Tensor("CLASS_IDS", class_ids), pb_utils.Tensor("LABELS", names)]))
        return responses
