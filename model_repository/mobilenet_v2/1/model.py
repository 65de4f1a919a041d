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
from cpu_steps import REPOSITORY, cpu_session, images_per_run, load_step  # noqa: E402

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
        responses: list[Any] = [None] * len(requests)
        accepted: list[tuple[int, np.ndarray, list[int]]] = []
        for index, request in enumerate(requests):
            try:
                ks = top_ks(request)
            except ValueError as err:
                responses[index] = pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(str(err), pb_utils.TritonError.INVALID_ARG))
                continue
            images = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy()
            accepted.append((index, images, ks))
        if not accepted:
            return responses
        tensors, sizes, statuses = preprocess.preprocess_batch(
            np.concatenate([images.reshape(-1) for _, images, _ in accepted]))
        logits, features = self.session.run(["logits", "embedding"], {"input": tensors})
        row = 0
        for index, images, ks in accepted:
            rows = range(row, row + images.shape[0])
            results = [postprocess.postprocess_image(logits[i], features[i],
                                                     int(statuses[i, 0]), ks[i - row])
                       for i in rows]
            embeddings = np.stack([embedding for embedding, _ in results]).astype(np.float32)
            class_ids, scores, names = postprocess.pack_classes(
                [classes for _, classes in results], self.labels)
            responses[index] = pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor("EMBEDDING", embeddings), pb_utils.Tensor("CLASS_IDS", class_ids),
                pb_utils.Tensor("SCORES", scores), pb_utils.Tensor("LABELS", names),
                pb_utils.Tensor("IMAGE_SIZE", sizes[rows.start:rows.stop]),
                pb_utils.Tensor("IMAGE_STATUS", statuses[rows.start:rows.stop])])
            row = rows.stop
        return responses
