"""Faces: YuNet detection (step `yunet_onnx`) with 5 landmarks, alignment onto the ArcFace
template and MobileFaceNet embeddings (step `mobilefacenet_onnx`), over every image of a batch.

1. decode (BGR, EXIF applied); an undecodable image gets its IMAGE_STATUS and no faces;
2. YuNet at the decoded resolution, shrunk only when the longest side exceeds MAX_SIDE,
   zero-padded to multiples of 32 as OpenCV's FaceDetectorYN pads it; equally sized images
   share one call;
3. decode YuNet's per-stride grids, threshold, NMS, map back to the decoded image;
4. align each face by the similarity transform of its 5 landmarks onto the ArcFace 112x112
   template, and run all faces of the batch through MobileFaceNet together; L2-normalised.
Landmarks are in YuNet's order: right eye, left eye, nose tip, right mouth corner, left mouth
corner, "right"/"left" being the person's own, so the right eye is the one on the image's left,
matching the order of the ArcFace template points.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from triton_models.images import STATUS_OK, decode
from triton_models.nms import nms
from triton_models.resize import pad_to_multiple, shrink_to_fit
from triton_models.steps import Steps

DETECTOR = "yunet_onnx"
EMBEDDER = "mobilefacenet_onnx"
STEP_MAX_BATCH = 32  # max_batch_size of both steps' configs
STRIDES = (8, 16, 32)
DETECTOR_OUTPUTS = [
    f"{kind}_{stride}" for kind in ("cls", "obj", "bbox", "kps") for stride in STRIDES
]
# Full-HD: typical photos run at their own resolution, where small faces in group photos stay
# detectable; bigger ones are shrunk so a 40 MP upload costs what a 1920-wide photo does.
MAX_SIDE = 1920
DIVISOR = 32
NMS_IOU = 0.3  # OpenCV's FaceDetectorYN default for this model
MAX_CANDIDATES = 5000  # best-scored boxes entering NMS, as FaceDetectorYN's top_k
FACE_SIZE = 112
# The standard ArcFace 112x112 positions of the 5 landmarks (insightface), YuNet's order.
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float32,
)
EMBEDDING_DIM = 128


FloatArray = npt.NDArray[np.float32]
UInt8Image = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class Faces:
    """One image's faces, best score first, in pixels of the decoded image."""

    boxes: FloatArray  # [k, 4] x1, y1, x2, y2, clipped to the image
    scores: FloatArray  # [k]
    landmarks: FloatArray  # [k, 10] (x, y) x 5 in YuNet's order


NO_FACES = Faces(
    boxes=np.zeros((0, 4), dtype=np.float32),
    scores=np.zeros(0, dtype=np.float32),
    landmarks=np.zeros((0, 10), dtype=np.float32),
)


def detector_input(
    image: UInt8Image, max_side: int = MAX_SIDE, divisor: int = DIVISOR
) -> tuple[FloatArray, float]:
    """The YuNet input for one image (CHW float32 BGR 0-255, the image at the top-left, zero
    padding up to multiples of `divisor`) and the scale that maps network pixels back (divide)."""
    shrunk, scale = shrink_to_fit(image, max_side)
    return pad_to_multiple(shrunk, divisor), scale


def decode_detections(
    outputs: dict[str, FloatArray], height: int, width: int, score_threshold: float
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Boxes (x1, y1, x2, y2), scores and landmarks above the threshold, in network-input pixels.

    Per stride s, anchors run row-major over the (height/s) x (width/s) grid; at cell (c, r):
    score = sqrt(clip(cls) * clip(obj)), centre = ((c, r) + (dx, dy)) * s,
    size = exp(log w, log h) * s, landmark = ((c, r) + offset) * s.
    """
    all_boxes, all_scores, all_landmarks = [], [], []
    for stride in STRIDES:
        cols, rows = width // stride, height // stride
        cls = np.clip(outputs[f"cls_{stride}"][:, 0], 0.0, 1.0)
        obj = np.clip(outputs[f"obj_{stride}"][:, 0], 0.0, 1.0)
        if len(cls) != rows * cols:
            raise ValueError(f"stride {stride}: {len(cls)} anchors for a {rows}x{cols} grid")
        scores = np.sqrt(cls * obj)
        keep = np.flatnonzero(scores > score_threshold)
        cells_y, cells_x = np.divmod(keep, cols)
        cells = np.stack((cells_x, cells_y), axis=1).astype(np.float32)
        bbox = outputs[f"bbox_{stride}"][keep]
        centres = (cells + bbox[:, :2]) * stride
        sizes = np.exp(bbox[:, 2:4]) * stride
        all_boxes.append(np.concatenate((centres - sizes / 2, centres + sizes / 2), axis=1))
        kps = outputs[f"kps_{stride}"][keep].reshape(-1, 5, 2)
        all_landmarks.append(((kps + cells[:, None, :]) * stride).reshape(-1, 10))
        all_scores.append(scores[keep])
    return (
        np.concatenate(all_boxes).astype(np.float32),
        np.concatenate(all_scores).astype(np.float32),
        np.concatenate(all_landmarks).astype(np.float32),
    )


def detect_faces(
    outputs: dict[str, FloatArray],
    padded_hw: tuple[int, int],
    scale: float,
    image_hw: tuple[int, int],
    score_threshold: float,
) -> Faces:
    """One image's faces from its YuNet outputs, in pixels of the decoded image."""
    boxes, scores, landmarks = decode_detections(outputs, *padded_hw, score_threshold)
    if len(scores) > MAX_CANDIDATES:
        best = np.argsort(-scores, kind="stable")[:MAX_CANDIDATES]
        boxes, scores, landmarks = boxes[best], scores[best], landmarks[best]
    keep = nms(boxes, scores, NMS_IOU)
    height, width = image_hw
    mapped = boxes[keep] / np.float32(scale)
    mapped[:, 0::2] = np.clip(mapped[:, 0::2], 0, width)
    mapped[:, 1::2] = np.clip(mapped[:, 1::2], 0, height)
    return Faces(
        boxes=mapped.astype(np.float32),
        scores=scores[keep],
        landmarks=(landmarks[keep] / np.float32(scale)).astype(np.float32),
    )


def similarity_transform(source: FloatArray, target: FloatArray) -> FloatArray:
    """The 2x3 rotation + uniform scale + translation that maps `source` points onto `target`
    with the least squared error (Umeyama 1991, reflections excluded)."""
    src, dst = source.astype(np.float64), target.astype(np.float64)
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    covariance = dst_c.T @ src_c / len(src)
    u, singular, vt = np.linalg.svd(covariance)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1] = -1.0
    rotation = u @ np.diag(sign) @ vt
    variance = (src_c**2).sum() / len(src)
    scale = float((singular * sign).sum() / variance) if variance > 0 else 1.0
    translation = dst_mean - scale * rotation @ src_mean
    return np.hstack((scale * rotation, translation[:, None])).astype(np.float32)


def align_face(image: UInt8Image, landmarks: FloatArray) -> UInt8Image:
    """The 112x112 BGR face crop whose landmarks land on the ArcFace template."""
    matrix = similarity_transform(landmarks.reshape(5, 2), ARCFACE_TEMPLATE)
    aligned = cv2.warpAffine(
        image, matrix, (FACE_SIZE, FACE_SIZE), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0)
    )
    return aligned.astype(np.uint8, copy=False)


def embedder_input(face: UInt8Image) -> FloatArray:
    """An aligned BGR face as MobileFaceNet's input: RGB, (x - 127.5) / 127.5, CHW."""
    rgb = face[:, :, ::-1].astype(np.float32)
    return ((rgb - np.float32(127.5)) / np.float32(127.5)).transpose(2, 0, 1).astype(np.float32)


def l2_normalise_rows(vectors: FloatArray) -> FloatArray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def check_threshold(value: float) -> float:
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(f"SCORE_THRESHOLD must be in [0, 1], got {value}")
    return value


def pack_faces(
    results: list[Faces], embeddings: list[FloatArray | None]
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """Stack one request's images into [n, k, ...] tensors, k = the most faces in an image.

    Shorter lists are padded with zero boxes, landmarks and embeddings and SCORES -1 (never a
    real score). EMBEDDINGS has k rows when an image of the request asked for them (None marks
    one that did not; its rows stay zero), else 0 rows.
    """
    count = len(results)
    longest = max((len(result.scores) for result in results), default=0)
    wanted = any(embedding is not None for embedding in embeddings)
    boxes = np.zeros((count, longest, 4), dtype=np.float32)
    scores = np.full((count, longest), -1.0, dtype=np.float32)
    landmarks = np.zeros((count, longest, 10), dtype=np.float32)
    packed = np.zeros((count, longest if wanted else 0, EMBEDDING_DIM), dtype=np.float32)
    for row, (result, embedding) in enumerate(zip(results, embeddings, strict=True)):
        k = len(result.scores)
        boxes[row, :k] = result.boxes
        scores[row, :k] = result.scores
        landmarks[row, :k] = result.landmarks
        if embedding is not None:
            packed[row, :k] = embedding
    return boxes, scores, landmarks, packed


@dataclass
class Item:
    """One image of one request on its way through the pipeline."""

    image: UInt8Image | None
    threshold: float
    include_embeddings: bool
    faces: Faces = NO_FACES
    embeddings: FloatArray | None = None
    status: int = STATUS_OK


def decode_item(data: bytes, threshold: float, include_embeddings: bool) -> Item:
    """The image decoded, or no image with the status that says why."""
    image, status = decode(data)
    return Item(image, threshold, include_embeddings, status=status)


def detect_all(items: list[Item], steps: Steps) -> None:
    """Run YuNet on every decoded image, equally sized inputs together, and set their faces."""
    groups: dict[tuple[int, ...], list[tuple[Item, UInt8Image, FloatArray, float]]]
    groups = defaultdict(list)
    for item in items:
        if item.image is not None:
            tensor, scale = detector_input(item.image)
            groups[tensor.shape].append((item, item.image, tensor, scale))
    for shape, members in groups.items():
        for start in range(0, len(members), STEP_MAX_BATCH):
            chunk = members[start : start + STEP_MAX_BATCH]
            batch = np.stack([tensor for _, _, tensor, _ in chunk])
            raw = steps.run(DETECTOR, {"input": batch}, DETECTOR_OUTPUTS)
            for row, (item, image, _, scale) in enumerate(chunk):
                outputs = {name: raw[name][row] for name in DETECTOR_OUTPUTS}
                item.faces = detect_faces(
                    outputs, (shape[1], shape[2]), scale, image.shape[:2], item.threshold
                )


def embed_all(items: list[Item], steps: Steps) -> None:
    """Align every face of the images that asked for embeddings; embed them all together."""
    wanted = [
        (item, item.image) for item in items if item.include_embeddings and item.image is not None
    ]
    crops = [
        embedder_input(align_face(image, landmarks))
        for item, image in wanted
        for landmarks in item.faces.landmarks
    ]
    vectors = []
    for start in range(0, len(crops), STEP_MAX_BATCH):
        batch = np.stack(crops[start : start + STEP_MAX_BATCH])
        vectors.append(steps.run(EMBEDDER, {"input": batch}, ["embeddings"])["embeddings"])
    flat = l2_normalise_rows(np.concatenate(vectors)) if vectors else np.zeros((0, EMBEDDING_DIM))
    offset = 0
    for item, _ in wanted:
        k = len(item.faces.scores)
        item.embeddings = flat[offset : offset + k].astype(np.float32)
        offset += k
