"""An independent in-process face pipeline (onnxruntime on the original YuNet and MobileFaceNet
cache files, OpenCV's NMS, least-squares alignment), written from ../shared/models/SOURCES.md and
OpenCV's FaceDetectorYN, to check what Triton's yunet_mobilefacenet model returns."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import onnxruntime as ort

MODELS = Path(__file__).resolve().parents[1].parent / "shared" / "models"
YUNET = MODELS / "face_detection_yunet_2026may.onnx"
MOBILEFACENET = MODELS / "mobilefacenet_128d.onnx"
MAX_SIDE = 1920
NMS_IOU = 0.3
# insightface's ArcFace 112x112 landmark template: eyes, nose, mouth corners (image left first).
TEMPLATE = [(38.2946, 51.6963), (73.5318, 51.5014), (56.0252, 71.7366),
            (41.5493, 92.3655), (70.7299, 92.2041)]


@dataclass(frozen=True)
class RefFace:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2
    score: float
    landmarks: tuple[float, ...]  # 10 values: (x, y) x 5
    embedding: npt.NDArray[np.float32]  # [128], unit length


@cache
def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _yunet(image: npt.NDArray[np.uint8], score_threshold: float) -> list[tuple[
        list[float], float, list[float]]]:
    """(box xywh, score, landmarks) in pixels of `image`, after NMS."""
    h, w = image.shape[:2]
    ratio = min(1.0, MAX_SIDE / max(h, w))
    small = image if ratio == 1.0 else cv2.resize(
        image, (max(1, round(w * ratio)), max(1, round(h * ratio))), interpolation=cv2.INTER_AREA)
    rh, rw = small.shape[:2]
    ph, pw = (rh + 31) // 32 * 32, (rw + 31) // 32 * 32
    padded = cv2.copyMakeBorder(small, 0, ph - rh, 0, pw - rw, cv2.BORDER_CONSTANT, value=0)
    blob = cv2.dnn.blobFromImage(padded)  # NCHW float32, BGR, no scaling
    session = _session(YUNET)
    names = [output.name for output in session.get_outputs()]
    out = dict(zip(names, session.run(names, {"input": blob}), strict=True))
    boxes, scores, points = [], [], []
    for stride in (8, 16, 32):
        cols = pw // stride
        cls, obj = out[f"cls_{stride}"][0, :, 0], out[f"obj_{stride}"][0, :, 0]
        bbox, kps = out[f"bbox_{stride}"][0], out[f"kps_{stride}"][0]
        for idx in range(len(cls)):
            score = float(np.sqrt(min(max(cls[idx], 0.0), 1.0) * min(max(obj[idx], 0.0), 1.0)))
            if score <= score_threshold:
                continue
            r, c = divmod(idx, cols)
            bw, bh = np.exp(bbox[idx, 2]) * stride, np.exp(bbox[idx, 3]) * stride
            cx, cy = (c + bbox[idx, 0]) * stride, (r + bbox[idx, 1]) * stride
            boxes.append([(cx - bw / 2) / ratio, (cy - bh / 2) / ratio, bw / ratio, bh / ratio])
            scores.append(score)
            points.append([float((kps[idx, 2 * n] + c) * stride / ratio) if axis == 0
                           else float((kps[idx, 2 * n + 1] + r) * stride / ratio)
                           for n in range(5) for axis in (0, 1)])
    keep = cv2.dnn.NMSBoxes(boxes, scores, score_threshold, NMS_IOU) if boxes else []
    found = [(boxes[i], scores[i], points[i]) for i in np.asarray(keep, dtype=int).reshape(-1)]
    return sorted(found, key=lambda face: -face[1])


def _aligned_blob(image: npt.NDArray[np.uint8], points: list[float]) -> npt.NDArray[np.float32]:
    # Similarity (a, b, tx, ty): [x' y'] = [[a -b] [b a]] [x y] + t, solved by least squares.
    rows, rhs = [], []
    for (x, y), (u, v) in zip(zip(points[0::2], points[1::2], strict=True), TEMPLATE, strict=True):
        rows += [[x, -y, 1.0, 0.0], [y, x, 0.0, 1.0]]
        rhs += [u, v]
    (a, b, tx, ty), *_ = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)
    matrix = np.array([[a, -b, tx], [b, a, ty]], dtype=np.float64)
    face = cv2.warpAffine(image, matrix, (112, 112), flags=cv2.INTER_LINEAR)
    blob = cv2.dnn.blobFromImage(face, 1 / 127.5, (112, 112), (127.5, 127.5, 127.5), swapRB=True)
    return np.asarray(blob, dtype=np.float32)


def faces(image: npt.NDArray[np.uint8], score_threshold: float = 0.6) -> list[RefFace]:
    """Faces of a decoded BGR image, best score first, each with its embedding."""
    h, w = image.shape[:2]
    result = []
    for (x, y, bw, bh), score, points in _yunet(image, score_threshold):
        (vector,) = _session(MOBILEFACENET).run(["embeddings"],
                                                {"input": _aligned_blob(image, points)})[0]
        box = (float(np.clip(x, 0, w)), float(np.clip(y, 0, h)),
               float(np.clip(x + bw, 0, w)), float(np.clip(y + bh, 0, h)))
        result.append(RefFace(box, score, tuple(points),
                              (vector / np.linalg.norm(vector)).astype(np.float32)))
    return result
