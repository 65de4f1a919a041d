"""Triton Python model for CPU runs: the whole yolox_nano ensemble as one step.

Used only with configs/cpu.pbtxt; on GPU the ensemble (config.pbtxt) chains the three steps and
the network runs on Triton's native onnxruntime backend. On a CPU every Python-backend step is
a stub process of its own, and each hop between steps copies a 2 MB letterboxed tensor through
shared memory and waits for another scheduler; one step that decodes, runs the network and
postprocesses in the same process removes two hops per image (bench/REPORT.md, "CPU path").
Both configurations run the same functions (triton_models.yolox).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from triton_models.serving import FusedModel, read_input
from triton_models.yolox import (
    NUM_CLASSES,
    check_threshold,
    pack_detections,
    postprocess_rows,
    preprocess_batch,
)


class TritonPythonModel(FusedModel):
    """Detections for every image of every request Triton hands over, their letterboxed
    tensors through one onnxruntime session a few at a time (triton_models.steps)."""

    pb_utils = pb_utils
    network_step = "yolox_nano_onnx"
    labels_file = "yolox_postprocess/labels.txt"
    num_classes = NUM_CLASSES

    def read_options(self, request: Any) -> tuple[np.ndarray, np.ndarray]:
        """The request's per-image thresholds, checked before its images are run."""
        scores, ious = (read_input(pb_utils, request, name).reshape(-1)
                        for name in ("SCORE_THRESHOLD", "IOU_THRESHOLD"))
        for score, iou in zip(scores, ious, strict=True):
            check_threshold("SCORE_THRESHOLD", float(score))
            check_threshold("IOU_THRESHOLD", float(iou))
        return scores, ious

    def run(self, images: np.ndarray) -> tuple[np.ndarray, ...]:
        tensors, scales, sizes, statuses = preprocess_batch(images)
        (predictions,) = self.network.run(["output"], {"images": tensors})
        return predictions, scales, sizes, statuses

    def respond(self, outputs: tuple[np.ndarray, ...], rows: slice,
                options: tuple[np.ndarray, np.ndarray]) -> Any:
        predictions, scales, sizes, statuses = (output[rows] for output in outputs)
        results = postprocess_rows(predictions, scales, sizes, statuses, *options)
        boxes, found, class_ids, names = pack_detections(results, self.labels)
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("BOXES", boxes), pb_utils.Tensor("SCORES", found),
            pb_utils.Tensor("CLASS_IDS", class_ids), pb_utils.Tensor("LABELS", names),
            pb_utils.Tensor("IMAGE_SIZE", sizes), pb_utils.Tensor("IMAGE_STATUS", statuses)])
