"""Triton Python model for CPU runs: the whole mobilenet_v2 ensemble as one step.

Used only with configs/cpu.pbtxt; on GPU the ensemble (config.pbtxt) chains the three steps and
the network runs on Triton's native onnxruntime backend. On a CPU one step that decodes, runs
the network and postprocesses in one process saves two stub hops per image, each copying the
image tensor through shared memory (bench/REPORT.md, "CPU path"). Both configurations run the
same functions (triton_models.mobilenet).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from triton_models.mobilenet import (
    NUM_CLASSES,
    check_top_k,
    embeddings_and_classes,
    preprocess_batch,
)
from triton_models.serving import FusedModel, read_input


class TritonPythonModel(FusedModel):
    """An embedding and the top classes of every image of every request Triton hands over."""

    pb_utils, network_step, num_classes = pb_utils, "mobilenet_v2_onnx", NUM_CLASSES
    labels_file = "mobilenet_v2_postprocess/labels.txt"

    def read_options(self, request: Any) -> list[int]:
        """The request's per-image TOP_K, checked before its images are run."""
        return [check_top_k(int(k)) for k in read_input(pb_utils, request, "TOP_K").reshape(-1)]

    def run(self, images: np.ndarray) -> tuple[np.ndarray, ...]:
        tensors, sizes, statuses = preprocess_batch(images)
        logits, features = self.network.run(["logits", "embedding"], {"input": tensors})
        return logits, features, sizes, statuses

    def respond(self, outputs: tuple[np.ndarray, ...], rows: slice, ks: list[int]) -> Any:
        logits, features, sizes, statuses = (output[rows] for output in outputs)
        embeddings, class_ids, scores, names = embeddings_and_classes(
            logits, features, statuses, ks, self.labels)
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("EMBEDDING", embeddings), pb_utils.Tensor("CLASS_IDS", class_ids),
            pb_utils.Tensor("SCORES", scores), pb_utils.Tensor("LABELS", names),
            pb_utils.Tensor("IMAGE_SIZE", sizes), pb_utils.Tensor("IMAGE_STATUS", statuses)])
