"""Triton Python model: turn MobileNetV2's outputs into an image embedding and top-k labels.

Per image: the 1280-d pooled feature L2-normalised, softmax over the 1000 ImageNet logits, the
TOP_K most probable classes best first with their names (labels.txt beside this file). An image
whose IMAGE_STATUS says it was not decodable gets a zero embedding and no classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import triton_python_backend_utils as pb_utils

NUM_CLASSES = 1000
STATUS_OK = 0

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Classes:
    """One image's top classes, most probable first."""

    class_ids: npt.NDArray[np.int32]  # [k]
    scores: FloatArray  # [k] softmax probabilities


def softmax(logits: FloatArray) -> FloatArray:
    shifted = logits.astype(np.float64) - np.max(logits)
    exp = np.exp(shifted)
    return (exp / exp.sum()).astype(np.float32)


def top_k(probabilities: FloatArray, k: int) -> Classes:
    """The k most probable classes, best first; equal scores keep the lower class id first."""
    order = np.argsort(-probabilities, kind="stable")[:k]
    return Classes(class_ids=order.astype(np.int32), scores=probabilities[order])


def l2_normalise(vector: FloatArray) -> FloatArray:
    norm = float(np.linalg.norm(vector))
    if norm == 0.0:
        return vector.astype(np.float32)
    return (vector / norm).astype(np.float32)


def check_top_k(value: int) -> int:
    if not 1 <= value <= NUM_CLASSES:
        raise ValueError(f"TOP_K must be in [1, {NUM_CLASSES}], got {value}")
    return value


def postprocess_image(
    logits: FloatArray, features: FloatArray, status: int, k: int
) -> tuple[FloatArray, Classes]:
    """Embedding and top-k classes of one image; empty for an image that was not decoded."""
    if status != STATUS_OK:
        empty = Classes(np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.float32))
        return np.zeros_like(features, dtype=np.float32), empty
    return l2_normalise(features), top_k(softmax(logits), k)


def pack_classes(
    results: list[Classes], labels: list[str]
) -> tuple[npt.NDArray[np.int32], FloatArray, npt.NDArray[np.object_]]:
    """Stack one request's images into [n, k] tensors, k = the longest list in the request;
    shorter lists are padded with class -1, score 0 and label ""."""
    longest = max((len(result.class_ids) for result in results), default=0)
    class_ids = np.full((len(results), longest), -1, dtype=np.int32)
    scores = np.zeros((len(results), longest), dtype=np.float32)
    names = np.full((len(results), longest), b"", dtype=np.object_)
    for row, result in enumerate(results):
        k = len(result.class_ids)
        class_ids[row, :k] = result.class_ids
        scores[row, :k] = result.scores
        names[row, :k] = [labels[int(cls)].encode() for cls in result.class_ids]
    return class_ids, scores, names


def read_labels(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def read_input(request: Any, name: str) -> Any:
    return pb_utils.get_input_tensor_by_name(request, name).as_numpy()


class TritonPythonModel:
    """Postprocesses every image of every request; a bad TOP_K fails only its request."""

    def initialize(self, args: dict[str, str]) -> None:
        self.labels = read_labels(Path(args["model_repository"]) / "labels.txt")
        if len(self.labels) != NUM_CLASSES:
            raise pb_utils.TritonModelException(
                f"labels.txt has {len(self.labels)} names, the network {NUM_CLASSES} classes"
            )

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            logits, features = read_input(request, "LOGITS"), read_input(request, "FEATURES")
            statuses, ks = read_input(request, "IMAGE_STATUS"), read_input(request, "TOP_K")
            try:
                results = [
                    postprocess_image(
                        logits[i], features[i], int(statuses[i, 0]), check_top_k(int(ks[i, 0]))
                    )
                    for i in range(len(logits))
                ]
            except ValueError as err:
                error = pb_utils.TritonError(str(err), pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            embeddings = np.stack([embedding for embedding, _ in results]).astype(np.float32)
            class_ids, scores, names = pack_classes(
                [classes for _, classes in results], self.labels
            )
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("EMBEDDING", embeddings),
                        pb_utils.Tensor("CLASS_IDS", class_ids),
                        pb_utils.Tensor("SCORES", scores),
                        pb_utils.Tensor("LABELS", names),
                    ]
                )
            )
        return responses
