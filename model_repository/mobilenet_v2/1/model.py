"""Triton Python model for CPU runs: the whole mobilenet_v2 ensemble as one step.

Used only with configs/cpu.pbtxt; on GPU the ensemble (config.pbtxt) chains the three steps and
the network runs on Triton's native onnxruntime backend. On a CPU one step that decodes, runs
the network and postprocesses in one process saves two stub hops per image, each copying the
image tensor through shared memory (bench/REPORT.md, "CPU path"). The functions are the steps'
own (mobilenet_v2_preprocess, mobilenet_v2_onnx, mobilenet_v2_postprocess).
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

preprocess = load_step("mobilenet_v2_preprocess")
network = load_step("mobilenet_v2_onnx")
postprocess = load_step("mobilenet_v2_postprocess")


def top_ks(request: Any) -> list[int]:
    """The request's per-image TOP_K; ValueError when one is out of range."""
    return [postprocess.check_top_k(int(k))
            for k in postprocess.read_input(request, "TOP_K").reshape(-1)]


class TritonPythonModel:
    """Every image of every request Triton hands over goes through one onnxruntime session,
    a few images per call (cpu_steps.CpuNetwork)."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        self.session = cpu_session("mobilenet_v2_onnx", network.intra_op_threads(config),
                                   images_per_run(config))
        self.labels = postprocess.read_labels(
            REPOSITORY / "mobilenet_v2_postprocess" / "labels.txt")

    def execute(self, requests: list[Any]) -> list[Any]:
        return execute_fused(requests, pb_utils, top_ks, self.run, self.respond)

    def run(self, images: np.ndarray) -> tuple[np.ndarray, ...]:
        tensors, sizes, statuses = preprocess.preprocess_batch(images)
        logits, features = self.session.run(["logits", "embedding"], {"input": tensors})
        return logits, features, sizes, statuses

    def respond(self, outputs: tuple[np.ndarray, ...], rows: slice, ks: list[int]) -> Any:
        logits, features, sizes, statuses = outputs
        results = [postprocess.postprocess_image(logits[i], features[i], int(statuses[i, 0]),
                                                 ks[i - rows.start])
                   for i in range(rows.start, rows.stop)]
        embeddings = np.stack([embedding for embedding, _ in results]).astype(np.float32)
        class_ids, scores, names = postprocess.pack_classes(
            [classes for _, classes in results], self.labels)
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("EMBEDDING", embeddings), pb_utils.Tensor("CLASS_IDS", class_ids),
            pb_utils.Tensor("SCORES", scores), pb_utils.Tensor("LABELS", names),
            pb_utils.Tensor("IMAGE_SIZE", sizes[rows]),
            pb_utils.Tensor("IMAGE_STATUS", statuses[rows])])
