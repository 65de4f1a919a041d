"""An independent in-process MobileNetV2 run (onnxruntime on the original cache file) with the
network's canonical ImageNet evaluation preprocessing, done by Pillow as torchvision does it:
RGB, `Resize(256)` (bilinear with antialiasing, the longer side truncated), `CenterCrop(224)`,
ImageNet mean/std. Nothing here shares code with model_repository/ or triton_models/."""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from PIL import Image, ImageOps

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT.parent / "shared" / "models" / "mobilenet_v2_imagenet.onnx"
LABELS_FILE = ROOT / "model_repository" / "mobilenet_v2_postprocess" / "labels.txt"
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


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


def pil_image(image: bytes | npt.NDArray[np.uint8]) -> Image.Image:
    """Encoded bytes opened by Pillow (EXIF orientation applied, as the service's decoder
    applies it), or a decoded BGR array as a PIL RGB image."""
    if isinstance(image, bytes):
        return ImageOps.exif_transpose(Image.open(io.BytesIO(image))).convert("RGB")
    return Image.fromarray(np.ascontiguousarray(image[:, :, ::-1]), mode="RGB")


def network_input(image: bytes | npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """torchvision's transforms.Resize(256), CenterCrop(224), ToTensor(), Normalize(...) on
    the PIL image."""
    picture = pil_image(image)
    width, height = picture.size
    if width <= height:
        size = (256, int(256 * height / width))
    else:
        size = (int(256 * width / height), 256)
    resized = picture.resize(size, Image.Resampling.BILINEAR)
    left, top = int(round((size[0] - 224) / 2.0)), int(round((size[1] - 224) / 2.0))
    crop = np.asarray(resized.crop((left, top, left + 224, top + 224)), dtype=np.float32) / 255.0
    return ((crop - MEAN) / STD).transpose(2, 0, 1)[None].astype(np.float32)


def embed(image: bytes | npt.NDArray[np.uint8], top_k: int = 5) -> RefEmbedding:
    """Embedding and top-k ImageNet classes of an encoded image or a decoded BGR array."""
    labels = LABELS_FILE.read_text().splitlines()
    logits, embedding = _session().run(["logits", "embedding"], {"input": network_input(image)})
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
