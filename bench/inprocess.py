"""The ceiling: the YOLOX-nano model's own pre/post-processing functions (triton_models.yolox,
what Triton's models run) around model.onnx, run with onnxruntime inside the calling process;
no RPC anywhere."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from bench.payloads import ROOT
from triton_models import yolox
from triton_models.serving import read_labels

MODELS = ROOT / "model_repository"
MODEL_FILE = MODELS / "yolox_nano_onnx" / "1" / "model.onnx"
SCORE_THRESHOLD = 0.25
IOU_THRESHOLD = 0.45


class InProcessDetector:
    """decode + letterbox → onnxruntime → decode grids, NMS, map back, labels: what the ensemble
    does per image, with the ensemble's own code."""

    def __init__(self, intra_op_threads: int, model_file: Path = MODEL_FILE) -> None:
        self._labels = read_labels(MODELS / "yolox_postprocess" / "labels.txt")
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1  # as the Triton model does
        self._session = ort.InferenceSession(
            str(model_file), sess_options=options, providers=["CPUExecutionProvider"])

    def detect(self, content: bytes) -> int:
        """Runs one image; returns the number of detections."""
        images, scales, sizes, _statuses = yolox.preprocess_batch(
            np.array([[content]], dtype=np.object_))
        raw = self._session.run(["output"], {"images": images})[0]
        result = yolox.postprocess_image(
            raw[0], float(scales[0, 0]), int(sizes[0, 0]), int(sizes[0, 1]),
            SCORE_THRESHOLD, IOU_THRESHOLD)
        yolox.pack_detections([result], self._labels)
        return len(result.scores)
