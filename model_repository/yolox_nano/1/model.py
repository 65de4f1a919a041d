"""Triton Python model for CPU runs: the whole yolox_nano ensemble as one step.

Used only with configs/cpu.pbtxt; on GPU the ensemble (config.pbtxt) chains the three steps and
the network runs on Triton's native onnxruntime backend. On a CPU every Python-backend step is
a stub process of its own, and each hop between steps copies a 2 MB letterboxed tensor through
shared memory and waits for another scheduler; one step that decodes, runs the network and
postprocesses in the same process removes two hops per image (bench/REPORT.md, "CPU path").

The functions are the steps' own (yolox_preprocess, yolox_nano_onnx, yolox_postprocess), loaded
from their folders, so the two configurations cannot drift apart.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

# cpu_steps.py is linked into each fused model's folder; Triton loads model.py on its own.
sys.path.insert(0, str(Path(__file__).parent))
from cpu_steps import (  # noqa: E402
    REPOSITORY,
    cpu_session,
    execute_fused,
    images_per_run,
    load_step,
)

preprocess = load_step("yolox_preprocess")
network = load_step("yolox_nano_onnx")
postprocess = load_step("yolox_postprocess")


def thresholds(request: Any) -> tuple[np.ndarray, np.ndarray]:
    """The request's per-image thresholds; ValueError when one is out of range."""
    scores = postprocess.read_input(request, "SCORE_THRESHOLD").reshape(-1)
    ious = postprocess.read_input(request, "IOU_THRESHOLD").reshape(-1)
    for score, iou in zip(scores, ious, strict=True):
        postprocess.check_threshold("SCORE_THRESHOLD", float(score))
        postprocess.check_threshold("IOU_THRESHOLD", float(iou))
    return scores, ious


class TritonPythonModel:
    """Every image of every request Triton hands over goes through one onnxruntime session,
    a few images per call (cpu_steps.CpuNetwork)."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        self.session = cpu_session("yolox_nano_onnx", network.intra_op_threads(config),
                                   images_per_run(config))
        self.labels = postprocess.read_labels(REPOSITORY / "yolox_postprocess" / "labels.txt")

    def execute(self, requests: list[Any]) -> list[Any]:
        return execute_fused(requests, pb_utils, thresholds, self.run, self.respond)

    def run(self, images: np.ndarray) -> tuple[np.ndarray, ...]:
        tensors, scales, sizes, statuses = preprocess.preprocess_batch(images)
        predictions = self.session.run(["output"], {"images": tensors})[0]
        return predictions, scales, sizes, statuses

    def respond(self, outputs: tuple[np.ndarray, ...], rows: slice,
                options: tuple[np.ndarray, np.ndarray]) -> Any:
        predictions, scales, sizes, statuses = outputs
        scores, ious = options
        results = [
            postprocess.postprocess_image(
                predictions[i], float(scales[i, 0]), int(sizes[i, 0]), int(sizes[i, 1]),
                float(scores[i - rows.start]), float(ious[i - rows.start]))
            if statuses[i, 0] == postprocess.STATUS_OK else postprocess.NO_DETECTIONS
            for i in range(rows.start, rows.stop)
        ]
        boxes, found, class_ids, names = postprocess.pack_detections(results, self.labels)
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("BOXES", boxes), pb_utils.Tensor("SCORES", found),
            pb_utils.Tensor("CLASS_IDS", class_ids), pb_utils.Tensor("LABELS", names),
            pb_utils.Tensor("IMAGE_SIZE", sizes[rows]),
            pb_utils.Tensor("IMAGE_STATUS", statuses[rows])])
