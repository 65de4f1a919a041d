"""The ceiling: the YOLOX-nano ensemble's own pre/post-processing functions (imported from
model_repository with a stand-in `triton_python_backend_utils`) around model.onnx, run with
onnxruntime inside the calling process; no RPC anywhere."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from bench.payloads import ROOT

MODELS = ROOT / "model_repository"
MODEL_FILE = MODELS / "yolox_nano_onnx" / "1" / "model.onnx"
SCORE_THRESHOLD = 0.25
IOU_THRESHOLD = 0.45


def _load_step(name: str) -> Any:
    """Import model_repository/<name>/1/model.py; the real pb_utils exists only inside Triton's
    stub, and these functions never touch it, so an empty module stands in."""
    sys.modules.setdefault("triton_python_backend_utils",
                           types.ModuleType("triton_python_backend_utils"))
    path = MODELS / name / "1" / "model.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}_model", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class body runs
    spec.loader.exec_module(module)
    return module


class InProcessDetector:
    """decode + letterbox → onnxruntime → decode grids, NMS, map back, labels: what the ensemble
    does per image, with the ensemble's own code."""

    def __init__(self, intra_op_threads: int, model_file: Path = MODEL_FILE) -> None:
        self._pre = _load_step("yolox_preprocess")
        self._post = _load_step("yolox_postprocess")
        self._labels = self._post.read_labels(MODELS / "yolox_postprocess" / "labels.txt")
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1  # as the Triton model does
        self._session = ort.InferenceSession(
            str(model_file), sess_options=options, providers=["CPUExecutionProvider"])

    def detect(self, content: bytes) -> int:
        """Runs one image; returns the number of detections."""
        images, scales, sizes, _statuses = self._pre.preprocess_batch(
            np.array([[content]], dtype=np.object_))
        raw = self._session.run(["output"], {"images": images})[0]
        result = self._post.postprocess_image(
            raw[0], float(scales[0, 0]), int(sizes[0, 0]), int(sizes[0, 1]),
            SCORE_THRESHOLD, IOU_THRESHOLD)
        self._post.pack_detections([result], self._labels)
        return len(result.scores)
