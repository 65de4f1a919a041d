"""Triton Python model for CPU runs: YOLOX-nano's model.onnx through onnxruntime.

Used only with configs/cpu.pbtxt; on GPU, Triton's onnxruntime backend loads model.onnx itself.
All requests Triton hands over run as one onnxruntime call, then split back per request.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

DEFAULT_INTRA_OP_THREADS = 2


def intra_op_threads(model_config: dict[str, Any]) -> int:
    """The `intra_op_threads` parameter of the model config, else the default."""
    parameter = model_config.get("parameters", {}).get("intra_op_threads")
    if parameter is None:
        return DEFAULT_INTRA_OP_THREADS
    return int(parameter["string_value"])


def run_batched(
    session: ort.InferenceSession, batches: list[npt.NDArray[np.float32]]
) -> list[npt.NDArray[np.float32]]:
    """Run several requests' inputs as one batch and split the output back per request."""
    outputs = session.run(["output"], {"images": np.concatenate(batches)})[0]
    bounds = np.cumsum([len(batch) for batch in batches])[:-1]
    return list(np.split(outputs, bounds))


class TritonPythonModel:
    """One onnxruntime session per model instance, sized by the config's thread parameter."""

    def initialize(self, args: dict[str, str]) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads(json.loads(args["model_config"]))
        # Triton already serialises calls to this instance; extra inter-op threads only contend.
        options.inter_op_num_threads = 1
        # Idle onnxruntime threads spin by default, burning a core the other steps and processes
        # of a CPU box need (bench/REPORT.md, CPU path: intra_op 2 cost twice the CPU per image).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        self.session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )

    def execute(self, requests: list[Any]) -> list[Any]:
        batches = [
            pb_utils.get_input_tensor_by_name(request, "images").as_numpy() for request in requests
        ]
        return [
            pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("output", output)])
            for output in run_batched(self.session, batches)
        ]
