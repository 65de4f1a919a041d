"""Triton Python model for CPU runs: the step's 1/model.onnx through onnxruntime.

Used only with configs/cpu.pbtxt; on GPU, Triton's onnxruntime backend loads model.onnx itself.
The same file serves every single-input network step (mobilenet_v2_onnx, and yunet_onnx and
mobilefacenet_onnx, whose 1/model.py links here): tensor names come from the model config.
Requests whose inputs share a shape run as one onnxruntime call (YuNet takes any image size,
so one batch may hold several shapes), then the outputs are split back per request.
"""

from __future__ import annotations

import json
from collections import defaultdict
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


def run_grouped(
    session: Any,
    input_name: str,
    output_names: list[str],
    batches: list[npt.NDArray[np.float32]],
) -> list[list[npt.NDArray[np.float32]]]:
    """Run the requests' inputs, one call per distinct input shape; per request, its outputs in
    the order of output_names."""
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for index, batch in enumerate(batches):
        groups[batch.shape[1:]].append(index)
    results: list[list[npt.NDArray[np.float32]]] = [[] for _ in batches]
    for members in groups.values():
        outputs = session.run(
            output_names, {input_name: np.concatenate([batches[i] for i in members])}
        )
        bounds = np.cumsum([len(batches[i]) for i in members])[:-1]
        for output in outputs:
            for index, part in zip(members, np.split(np.asarray(output), bounds), strict=True):
                results[index].append(part)
    return results


class TritonPythonModel:
    """One onnxruntime session per model instance, sized by the config's thread parameter."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        self.input_name: str = config["input"][0]["name"]
        self.output_names: list[str] = [output["name"] for output in config["output"]]
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads(config)
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
            pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy()
            for request in requests
        ]
        return [
            pb_utils.InferenceResponse(
                output_tensors=[
                    pb_utils.Tensor(name, output)
                    for name, output in zip(self.output_names, outputs, strict=True)
                ]
            )
            for outputs in run_grouped(self.session, self.input_name, self.output_names, batches)
        ]
