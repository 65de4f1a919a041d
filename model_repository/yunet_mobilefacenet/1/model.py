"""Triton Python (BLS) model: faces in encoded images, with 5 landmarks and 128-d embeddings.

Per execute, over every image of every request Triton batched together:
1. decode (BGR, EXIF applied); an undecodable image gets IMAGE_STATUS 1 and no faces;
2. YuNet (step `yunet_onnx`) at the decoded resolution, shrunk only when the longest side
   exceeds MAX_SIDE, zero-padded to multiples of 32; equally sized images share one request;
3. decode YuNet's per-stride grids, threshold, NMS, map back to the decoded image;
4. align each face by the similarity transform of its 5 landmarks onto the ArcFace 112x112
   template, and run all faces of the batch through MobileFaceNet (step `mobilefacenet_onnx`)
   together; embeddings L2-normalised.
Landmarks are in YuNet's order: right eye, left eye, nose tip, right mouth corner, left mouth
corner, "right"/"left" being the person's own, so the right eye is the one on the image's left,
matching the order of the ArcFace template points.
"""

from __future__ import annotations

import json
import math
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import triton_python_backend_utils as pb_utils

# The decode budget is one file linked into each decoding step's folder (decode_budget.py). Triton
# loads model.py on its own, so its folder is put on the import path here, for tests alike.
sys.path.insert(0, str(Path(__file__).parent))
from cpu_steps import InProcessSteps, in_process_steps  # noqa: E402
from decode_budget import (  # noqa: E402
    STATUS_OK,
    STATUS_TOO_COMPLEX,
    STATUS_UNDECODABLE,
    jpeg_too_complex,
    png_chunks_broken,
)

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


def decode_image(data: bytes) -> UInt8Image | None:
    """Decode JPEG/PNG/WebP/BMP bytes to HxWx3 BGR uint8 (EXIF orientation applied); None if
    the bytes are not a decodable image."""
    buffer = np.frombuffer(data, dtype=np.uint8)
    if buffer.size == 0:
        return None
    try:
        image = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    except cv2.error:
        return None
    if image is None or image.ndim != 3 or image.shape[2] != 3 or image.size == 0:
        return None
    return image.astype(np.uint8, copy=False)


def detector_input(
    image: UInt8Image, max_side: int = MAX_SIDE, divisor: int = DIVISOR
) -> tuple[FloatArray, float]:
    """The YuNet input for one image (CHW float32 BGR 0-255, the image at the top-left, zero
    padding up to multiples of `divisor`) and the scale that maps network pixels back (divide)."""
    height, width = image.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    if scale < 1.0:
        new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
    new_h, new_w = image.shape[:2]
    padded_h, padded_w = -(-new_h // divisor) * divisor, -(-new_w // divisor) * divisor
    tensor = np.zeros((3, padded_h, padded_w), dtype=np.float32)
    tensor[:, :new_h, :new_w] = image.transpose(2, 0, 1)
    return tensor, scale


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


def nms(boxes: FloatArray, scores: FloatArray, iou_threshold: float) -> npt.NDArray[np.intp]:
    """Greedy non-maximum suppression; indices of the kept boxes, best score first."""
    x1, y1, x2, y2 = boxes.T
    areas = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    order = scores.argsort(kind="stable")[::-1]
    keep = []
    while order.size > 0:
        best, rest = order[0], order[1:]
        keep.append(best)
        width = np.clip(np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]), 0, None)
        height = np.clip(np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]), 0, None)
        inter = width * height
        union = areas[best] + areas[rest] - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.intp)


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


class StepError(RuntimeError):
    """A step model called from this BLS model answered with an error."""


# Set by initialize when the config runs the network steps in this process (configs/cpu.pbtxt).
_in_process: InProcessSteps | None = None


def call_step(model_name: str, inputs: dict[str, FloatArray], outputs: list[str]) -> dict[str, Any]:
    """One network step's outputs as CPU numpy arrays by name: a synchronous BLS call, or on
    the CPU configuration the step's ONNX file run here."""
    if _in_process is not None:
        return _in_process.run(model_name, inputs, outputs)
    request = pb_utils.InferenceRequest(
        model_name=model_name,
        inputs=[pb_utils.Tensor(name, array) for name, array in inputs.items()],
        requested_output_names=outputs,
        # On GPU the step's outputs could stay in device memory; the numpy work needs them here.
        preferred_memory=pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0),
    )
    response = request.exec()
    if response.has_error():
        raise StepError(f"{model_name}: {response.error().message()}")
    return {name: pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in outputs}


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
    if jpeg_too_complex(data):
        return Item(None, threshold, include_embeddings, status=STATUS_TOO_COMPLEX)
    if png_chunks_broken(data):
        return Item(None, threshold, include_embeddings, status=STATUS_UNDECODABLE)
    image = decode_image(data)
    status = STATUS_OK if image is not None else STATUS_UNDECODABLE
    return Item(image, threshold, include_embeddings, status=status)


def detect_all(items: list[Item]) -> None:
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
            raw = call_step(DETECTOR, {"input": batch}, DETECTOR_OUTPUTS)
            for row, (item, image, _, scale) in enumerate(chunk):
                outputs = {name: raw[name][row] for name in DETECTOR_OUTPUTS}
                item.faces = detect_faces(
                    outputs, (shape[1], shape[2]), scale, image.shape[:2], item.threshold
                )


def embed_all(items: list[Item]) -> None:
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
        vectors.append(call_step(EMBEDDER, {"input": batch}, ["embeddings"])["embeddings"])
    flat = l2_normalise_rows(np.concatenate(vectors)) if vectors else np.zeros((0, EMBEDDING_DIM))
    offset = 0
    for item, _ in wanted:
        k = len(item.faces.scores)
        item.embeddings = flat[offset : offset + k].astype(np.float32)
        offset += k


def read_input(request: Any, name: str) -> Any:
    return pb_utils.get_input_tensor_by_name(request, name).as_numpy()


class TritonPythonModel:
    """Faces for every image of every request; a bad threshold fails only its request."""

    def initialize(self, args: dict[str, str]) -> None:
        global _in_process
        _in_process = in_process_steps(json.loads(args["model_config"]))

    def execute(self, requests: list[Any]) -> list[Any]:
        items: list[Item] = []
        errors: dict[int, str] = {}
        request_items: list[list[Item]] = []
        for index, request in enumerate(requests):
            images = read_input(request, "IMAGE").reshape(-1)
            thresholds = read_input(request, "SCORE_THRESHOLD").reshape(-1)
            include = read_input(request, "INCLUDE_EMBEDDINGS").reshape(-1)
            try:
                checked = [check_threshold(float(value)) for value in thresholds]
            except ValueError as err:
                errors[index] = str(err)
                request_items.append([])
                continue
            mine = [
                decode_item(bytes(data), threshold, bool(flag))
                for data, threshold, flag in zip(images, checked, include, strict=True)
            ]
            request_items.append(mine)
            items.extend(mine)
        try:
            detect_all(items)
            embed_all(items)
        except (StepError, ValueError) as err:
            # A failing step or outputs of an unexpected shape: a server fault, not the input's.
            error = pb_utils.TritonError(str(err))
            return [pb_utils.InferenceResponse(error=error) for _ in requests]

        responses = []
        for index, mine in enumerate(request_items):
            if index in errors:
                error = pb_utils.TritonError(errors[index], pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=error))
                continue
            boxes, scores, landmarks, embeddings = pack_faces(
                [item.faces for item in mine], [item.embeddings for item in mine]
            )
            sizes = np.array(
                [item.image.shape[:2] if item.image is not None else (0, 0) for item in mine],
                dtype=np.int32,
            )
            statuses = np.array([[item.status] for item in mine], dtype=np.int32)
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("BOXES", boxes),
                        pb_utils.Tensor("SCORES", scores),
                        pb_utils.Tensor("LANDMARKS", landmarks),
                        pb_utils.Tensor("EMBEDDINGS", embeddings),
                        pb_utils.Tensor("IMAGE_SIZE", sizes),
                        pb_utils.Tensor("IMAGE_STATUS", statuses),
                    ]
                )
            )
        return responses
