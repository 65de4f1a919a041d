"""Triton Python model of a network step for CPU runs (configs/cpu.pbtxt): the step's
1/model.onnx through onnxruntime (triton_models.serving.NetworkStep). Every other network
step's 1/model.py links here (mobilenet_v2_onnx, yunet_onnx, mobilefacenet_onnx, ppocr_v6_det,
ppocr_v6_cls, ppocr_v6_rec); on GPU Triton's onnxruntime backend loads the same
model.onnx (config.pbtxt) and this file is not used.
"""

from __future__ import annotations

from typing import Any

import triton_python_backend_utils as pb_utils

from triton_models.serving import NetworkStep


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        self.step = NetworkStep(pb_utils, args)

    def execute(self, requests: list[Any]) -> list[Any]:
        return self.step.execute(requests)
