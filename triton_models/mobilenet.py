"""MobileNetV2 (torchvision's ImageNet weights): its input as the network was evaluated (RGB,
antialiased Resize(256), CenterCrop(224), ImageNet mean/std: triton_models.resize) and its
outputs as an L2-normalised 1280-d embedding and the top-k ImageNet classes.

An undecodable image gets IMAGE_SIZE (0, 0), a zero tensor, a zero embedding and no classes, so
the rest of its batch proceeds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from triton_models.images import STATUS_OK, decode
from triton_models.resize import UInt8Image, shorter_side_centre_crop

RESIZE_SHORTER = 256
CROP = 224
NUM_CLASSES = 1000
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
# Beyond this aspect ratio the middle of the longer side is cut out before resizing: the 224
# crop only ever sees the middle, and a 1 x 3000 strip would otherwise resize to 256 x 768000.
MAX_ASPECT = 16

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Classes:
    """One image's top classes, most probable first."""

    class_ids: npt.NDArray[np.int32]  # [k]
    scores: FloatArray  # [k] softmax probabilities


NO_CLASSES = Classes(np.zeros(0, dtype=np.int32), np.zeros(0, dtype=np.float32))


def resize_and_crop(image: UInt8Image, shorter: int = RESIZE_SHORTER,
                    crop: int = CROP) -> UInt8Image:
    """Shorter side to `shorter`, then the centre crop x crop, antialiased."""
    height, width = image.shape[:2]
    longest = min(height, width) * MAX_ASPECT
    if height > longest:
        top = (height - longest) // 2
        image = image[top : top + longest]
    elif width > longest:
        left = (width - longest) // 2
        image = image[:, left : left + longest]
    return shorter_side_centre_crop(image, shorter, crop)


def normalise(bgr: UInt8Image) -> FloatArray:
    """BGR uint8 HxWx3 to the network's RGB, mean/std-normalised CHW float32."""
    rgb = bgr[:, :, ::-1].astype(np.float32) / np.float32(255.0)
    return ((rgb - MEAN) / STD).transpose(2, 0, 1).astype(np.float32)


def preprocess_batch(
    items: npt.NDArray[np.object_],
) -> tuple[FloatArray, npt.NDArray[np.int32], npt.NDArray[np.int32]]:
    """Tensors, (height, width) and status for every image of one request ([n, 1] bytes)."""
    flat = items.reshape(-1)
    tensors = np.zeros((len(flat), 3, CROP, CROP), dtype=np.float32)
    sizes = np.zeros((len(flat), 2), dtype=np.int32)
    statuses = np.zeros((len(flat), 1), dtype=np.int32)
    for index, item in enumerate(flat):
        image, statuses[index, 0] = decode(bytes(item))
        if image is not None:
            tensors[index] = normalise(resize_and_crop(image))
            sizes[index] = image.shape[:2]
    return tensors, sizes, statuses


def softmax(logits: FloatArray) -> FloatArray:
    shifted = logits.astype(np.float64) - np.max(logits)
    exp = np.exp(shifted)
    return np.asarray(exp / exp.sum(), dtype=np.float32)


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
        return np.zeros_like(features, dtype=np.float32), NO_CLASSES
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


def embeddings_and_classes(
    logits: FloatArray, features: FloatArray, statuses: npt.NDArray[np.int32], ks: list[int],
    labels: list[str],
) -> tuple[FloatArray, npt.NDArray[np.int32], FloatArray, npt.NDArray[np.object_]]:
    """One request's EMBEDDING, CLASS_IDS, SCORES and LABELS tensors from its rows."""
    results = [postprocess_image(logits[i], features[i], int(statuses[i, 0]), ks[i])
               for i in range(len(logits))]
    embeddings = np.stack([embedding for embedding, _ in results]).astype(np.float32)
    class_ids, scores, names = pack_classes([classes for _, classes in results], labels)
    return embeddings, class_ids, scores, names
