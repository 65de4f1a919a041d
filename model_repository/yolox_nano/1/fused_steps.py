"""What the fused CPU models (yolox_nano, mobilenet_v2 under configs/cpu.pbtxt) share: loading
their ensemble's steps' model.py files as modules, and the onnxruntime session they run the
network with. One file, linked into each fused model's folder."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

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
