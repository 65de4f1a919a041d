"""An independent in-process YOLOX-nano run (onnxruntime on the original cache file, OpenCV's
NMS), written from ../shared/models/SOURCES.md, to check what Triton's ensemble returns."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort

MODEL = Path(__file__).resolve().parents[1].parent / "shared" / "models" / "yolox_nano.onnx"
SIZE = 416
LABELS_FILE = (Path(__file__).resolve().parents[1] / "model_repository" / "yolox_postprocess"
               / "labels.txt")


@dataclass(frozen=True)
class RefDetection:
    label: str
    score: float
    box: tuple[float, float, float, float]


@cache
def _session() -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(MODEL), options, providers=["CPUExecutionProvider"])


def detect(image: np.ndarray, score_threshold: float = 0.25,
           iou_threshold: float = 0.45) -> list[RefDetection]:
    labels = LABELS_FILE.read_text().splitlines()
    h, w = image.shape[:2]
    ratio = min(SIZE / h, SIZE / w)
    canvas = np.full((SIZE, SIZE, 3), 114, dtype=np.uint8)
    resized = cv2.resize(image, (int(w * ratio), int(h * ratio)), interpolation=cv2.INTER_LINEAR)
    canvas[: resized.shape[0], : resized.shape[1]] = resized
    blob = canvas.transpose(2, 0, 1)[None].astype(np.float32)
    (raw,) = _session().run(None, {"images": blob})
    pred = raw[0]
    grids, strides = [], []
    for stride in (8, 16, 32):
        n = SIZE // stride
        ys, xs = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        grids.append(np.stack([xs, ys], -1).reshape(-1, 2))
        strides.append(np.full((n * n, 1), stride))
    grid, stride_col = np.concatenate(grids), np.concatenate(strides)
    centre = (pred[:, :2] + grid) * stride_col
    size = np.exp(pred[:, 2:4]) * stride_col
    class_scores = pred[:, 4:5] * pred[:, 5:]
    class_ids = class_scores.argmax(1)
    scores = class_scores[np.arange(len(class_ids)), class_ids]
    xywh = np.concatenate([centre - size / 2, size], 1) / ratio
    keep = cv2.dnn.NMSBoxesBatched(xywh.tolist(), scores.tolist(), class_ids.tolist(),
                                   score_threshold, iou_threshold)
    out = []
    for i in np.asarray(keep).reshape(-1):
        x, y, bw, bh = xywh[i]
        box = (float(np.clip(x, 0, w)), float(np.clip(y, 0, h)),
               float(np.clip(x + bw, 0, w)), float(np.clip(y + bh, 0, h)))
        out.append(RefDetection(labels[class_ids[i]], float(scores[i]), box))
    return sorted(out, key=lambda d: -d.score)
