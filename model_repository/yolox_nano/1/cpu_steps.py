"""What the CPU configurations of the top-level models share (configs/cpu.pbtxt): the fused
ensembles (yolox_nano, mobilenet_v2) load their steps' model.py files as modules, and every one
of them, the BLS models too (yunet_mobilefacenet, ppocr_v6), runs its network steps' ONNX files
in its own process instead of through another Python-backend stub. One file, linked into each
such model's folder."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import onnxruntime as ort

REPOSITORY = Path(__file__).resolve().parents[2]


def load_step(name: str) -> ModuleType:
    """model_repository/<name>/1/model.py as a module of its own name."""
    spec = importlib.util.spec_from_file_location(name, REPOSITORY / name / "1" / "model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def cpu_session(network_step: str, intra_op_threads: int) -> ort.InferenceSession:
    """The network step's model.onnx on the CPU provider: inter-op 1 (Triton serialises calls
    to an instance) and no spinning (idle threads would burn a core the other processes need)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(REPOSITORY / network_step / "1" / "model.onnx"),
                                sess_options=options, providers=["CPUExecutionProvider"])


def in_process_steps(model_config: dict[str, Any]) -> InProcessSteps | None:
    """InProcessSteps when the config's `steps_in_process` parameter is "true" (the CPU
    configurations), else None: the model calls its steps through Triton (BLS)."""
    parameters = model_config.get("parameters", {})
    if parameters.get("steps_in_process", {}).get("string_value") != "true":
        return None
    threads = int(parameters.get("intra_op_threads", {}).get("string_value", "1"))
    return InProcessSteps(threads)


class InProcessSteps:
    """Network steps run in this process: one session per step, made at its first call."""

    def __init__(self, intra_op_threads: int) -> None:
        self._threads = intra_op_threads
        self._sessions: dict[str, ort.InferenceSession] = {}

    def run(self, step: str, inputs: dict[str, Any], outputs: list[str]) -> dict[str, Any]:
        session = self._sessions.get(step)
        if session is None:
            session = self._sessions[step] = cpu_session(step, self._threads)
        return dict(zip(outputs, session.run(outputs, inputs), strict=True))
