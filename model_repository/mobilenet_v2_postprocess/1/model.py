"""Triton Python model, last step of the mobilenet_v2 ensemble (config.pbtxt): MobileNetV2's
outputs as an L2-normalised embedding and the TOP_K ImageNet classes with their names
(labels.txt beside this file; triton_models.mobilenet)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import triton_python_backend_utils as pb_utils

from triton_models.mobilenet import NUM_CLASSES, check_top_k, embeddings_and_classes
from triton_models.serving import invalid_argument, read_input, read_labels


class TritonPythonModel:
    """Postprocesses every image of every request; a bad TOP_K fails only its request."""

    def initialize(self, args: dict[str, str]) -> None:
        self.labels = read_labels(Path(args["model_repository"]) / "labels.txt", NUM_CLASSES)

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            logits, features, statuses = (read_input(pb_utils, request, name)
                                          for name in ("LOGITS", "FEATURES", "IMAGE_STATUS"))
            try:
                ks = [check_top_k(int(k)) for k in read_input(pb_utils, request, "TOP_K")[:, 0]]
            except ValueError as err:
                responses.append(invalid_argument(pb_utils, str(err)))
                continue
            embeddings, class_ids, scores, names = embeddings_and_classes(
                logits, features, statuses, ks, self.labels)
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("EMBEDDING", embeddings), pb_utils.Tensor("CLASS_IDS", class_ids),
                pb_utils.Tensor("SCORES", scores), pb_utils.Tensor("LABELS", names)]))
        return responses
