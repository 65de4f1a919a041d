"""An independent in-process MobileNetV2 run (onnxruntime on the original cache file), written
from ../shared/models/SOURCES.md and torchvision's ImageNet evaluation transform, to check what
Triton's mobilenet_v2 ensemble returns."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT.parent / "shared" / "models" / "mobilenet_v2_imagenet.onnx"
LABELS_FILE = ROOT / "model_repository" / "mobilenet_v2_postprocess" / "labels.txt"


@dataclass(frozen=True)
class RefEmbedding:
    embedding: npt.NDArray[np.float32]  # [1280], unit length
    class_ids: list[int]  # best first
    scores: list[float]
    labels: list[str]


@cache
def _session() -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(MODEL), options, providers=["CPUExecutionProvider"])


def _network_input(image: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    h, w = image.shape[:2]
    short = min(h, w)
    # torchvision Resize(256): the shorter side becomes 256, the other is truncated.
    size_hw = (256, int(256 * w / h)) if h == short else (int(256 * h / w), 256)
    enlarge = size_hw[0] * size_hw[1] > h * w
    resized = cv2.resize(
        image, size_hw[::-1], interpolation=cv2.INTER_LINEAR if enlarge else cv2.INTER_AREA
    )
    y0 = round((size_hw[0] - 224) / 2)
    x0 = round((size_hw[1] - 224) / 2)
    crop = cv2.cvtColor(resized[y0 : y0 + 224, x0 : x0 + 224], cv2.COLOR_BGR2RGB)
    mean = np.array([123.675, 116.28, 103.53], dtype=np.float32)
    std = np.array([58.395, 57.12, 57.375], dtype=np.float32)
    chw = np.moveaxis((crop.astype(np.float32) - mean) / std, 2, 0)
    return chw[None].astype(np.float32)


def embed(image: npt.NDArray[np.uint8], top_k: int = 5) -> RefEmbedding:
    """Embedding and top-k ImageNet classes of a decoded BGR image."""
    labels = LABELS_FILE.read_text().splitlines()
    logits, embedding = _session().run(["logits", "embedding"], {"input": _network_input(image)})
    z = logits[0].astype(np.float64)
    probabilities = np.exp(z - z.max())
    probabilities /= probabilities.sum()
    best = sorted(range(len(probabilities)), key=lambda i: -probabilities[i])[:top_k]
    vector = embedding[0] / np.linalg.norm(embedding[0])
    return RefEmbedding(
        embedding=vector.astype(np.float32),
        class_ids=best,
        scores=[float(probabilities[i]) for i in best],
        labels=[labels[i] for i in best],
    )
