"""What the CPU configurations of the top-level models share (configs/cpu.pbtxt): the fused
ensembles (yolox_nano, mobilenet_v2) load their steps' model.py files as modules, and every one
of them, the BLS models too (yunet_mobilefacenet, ppocr_v6), runs its network steps' ONNX files
in its own process instead of through another Python-backend stub. One file, linked into each
such model's folder.

The networks run at most `images_per_run` images per onnxruntime call (config parameter, default
IMAGES_PER_RUN), however large the batch Triton hands over. onnxruntime's CPU arena keeps the
buffers of the largest batch it ever ran until the process ends: batches of up to 32 images left
a YOLOX instance ~440 MiB larger for good, two at a time ~15 MiB (one at a time: nothing). On
one intra-op thread no network here ran faster on a whole batch: two images per call took
1-5 % less CPU per image than the whole batch at 8 images and 7-10 % less at 32 (issue 9,
bench/report/overload.md).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnxruntime as ort

REPOSITORY = Path(__file__).resolve().parents[2]
IMAGES_PER_RUN = 2
# onnxruntime execution providers in order of preference, comma-separated (e.g.
# "CUDAExecutionProvider,CPUExecutionProvider" on a GPU box: bench/gpu sets it for Triton).
PROVIDERS_ENV = "VISION_ORT_PROVIDERS"
# Batch sizes and OCR crop widths vary from call to call: cuDNN's exhaustive search (the CUDA
# provider's default) would benchmark every convolution again for each new shape.
PROVIDER_OPTIONS: dict[str, dict[str, str]] = {
    "CUDAExecutionProvider": {"cudnn_conv_algo_search": "HEURISTIC"}}


def load_step(name: str) -> ModuleType:
    """model_repository/<name>/1/model.py as a module of its own name."""
    spec = importlib.util.spec_from_file_location(name, REPOSITORY / name / "1" / "model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def images_per_run(model_config: dict[str, Any]) -> int:
    """The config's `images_per_run` parameter, else IMAGES_PER_RUN."""
    parameter = model_config.get("parameters", {}).get("images_per_run")
    return IMAGES_PER_RUN if parameter is None else max(1, int(parameter["string_value"]))


class CpuNetwork:
    """An onnxruntime session that runs a batch `per_run` images at a time and answers as one
    call on the whole batch would: each output concatenated along its first (batch) axis."""

    def __init__(self, session: Any, per_run: int) -> None:
        self.session = session
        self.per_run = per_run

    def run(self, output_names: Sequence[str], feeds: Mapping[str, np.ndarray]
            ) -> list[np.ndarray]:
        count = len(next(iter(feeds.values())))
        if count <= self.per_run:
            return list(self.session.run(output_names, feeds))
        parts = [self.session.run(output_names, {name: value[start:start + self.per_run]
                                                 for name, value in feeds.items()})
                 for start in range(0, count, self.per_run)]
        return [np.concatenate([part[index] for part in parts])
                for index in range(len(output_names))]


def execute_fused(requests: Sequence[Any], pb_utils: ModuleType,
                  read_options: Callable[[Any], Any],
                  run: Callable[[np.ndarray], Any],
                  respond: Callable[[Any, slice, Any], Any]) -> list[Any]:
    """A fused model's execute (`pb_utils`: the backend's module, which only a stub can import):
    each request's options read (a ValueError answers that request alone with INVALID_ARG),
    the images of every accepted request in one `run`, and each request answered by
    `respond(run's outputs, its rows, its options)`."""
    responses: list[Any] = [None] * len(requests)
    accepted: list[tuple[int, np.ndarray, Any]] = []
    for index, request in enumerate(requests):
        try:
            options = read_options(request)
        except ValueError as err:
            responses[index] = pb_utils.InferenceResponse(
                error=pb_utils.TritonError(str(err), pb_utils.TritonError.INVALID_ARG))
            continue
        images = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy().reshape(-1)
        accepted.append((index, images, options))
    if not accepted:
        return responses
    outputs = run(np.concatenate([images for _, images, _ in accepted]))
    row = 0
    for index, images, options in accepted:
        responses[index] = respond(outputs, slice(row, row + len(images)), options)
        row += len(images)
    return responses


def execution_providers() -> list[str]:
    """The providers PROVIDERS_ENV names that this onnxruntime build has, in that order, the
    CPU provider last; only the CPU provider when the variable is unset. The CUDA provider's
    libraries installed as Python packages (onnxruntime-gpu[cuda,cudnn]) are loaded first."""
    available = set(ort.get_available_providers())
    wanted = [name.strip() for name in os.environ.get(PROVIDERS_ENV, "").split(",")]
    chosen = [name for name in wanted if name in available and name != "CPUExecutionProvider"]
    if "CUDAExecutionProvider" in chosen and hasattr(ort, "preload_dlls"):
        ort.preload_dlls()
    return [*chosen, "CPUExecutionProvider"]


def cpu_session(network_step: str, intra_op_threads: int,
                per_run: int = IMAGES_PER_RUN) -> CpuNetwork:
    """The network step's model.onnx on execution_providers() (the CPU provider unless told
    otherwise): inter-op 1 (Triton serialises calls to an instance) and no spinning (idle
    threads would burn a core the other processes need)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(REPOSITORY / network_step / "1" / "model.onnx"),
                                   sess_options=options,
                                   providers=[(name, PROVIDER_OPTIONS.get(name, {}))
                                              for name in execution_providers()])
    return CpuNetwork(session, per_run)


def in_process_steps(model_config: dict[str, Any]) -> InProcessSteps | None:
    """InProcessSteps when the config's `steps_in_process` parameter is "true" (the CPU
    configurations), else None: the model calls its steps through Triton (BLS)."""
    parameters = model_config.get("parameters", {})
    if parameters.get("steps_in_process", {}).get("string_value") != "true":
        return None
    threads = int(parameters.get("intra_op_threads", {}).get("string_value", "1"))
    return InProcessSteps(threads, images_per_run(model_config))


class InProcessSteps:
    """Network steps run in this process: one session per step, made at its first call."""

    def __init__(self, intra_op_threads: int, per_run: int = IMAGES_PER_RUN) -> None:
        self._threads = intra_op_threads
        self._per_run = per_run
        self._sessions: dict[str, CpuNetwork] = {}

    def run(self, step: str, inputs: dict[str, Any], outputs: list[str]) -> dict[str, Any]:
        session = self._sessions.get(step)
        if session is None:
            session = self._sessions[step] = cpu_session(step, self._threads, self._per_run)
        return dict(zip(outputs, session.run(outputs, inputs), strict=True))
