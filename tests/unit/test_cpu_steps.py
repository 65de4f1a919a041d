"""Unit tests of triton_models.steps (the CPU configurations' network runs): networks run a
few images per onnxruntime call and answer as one call on the whole batch would; the step
object an entry model gets from its config; and which models the CPU configuration's Triton
loads (tools.local_triton.served_models)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from tools.local_triton import served_models
from triton_models import steps as cpu_steps

MODELS = Path(__file__).resolve().parents[2] / "model_repository"


class RecordingSession:
    """Answers `double` (the input times 2) and `total` (each image's sum), noting batch sizes."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def run(self, output_names: list[str], feeds: dict[str, npt.NDArray[np.float32]]
            ) -> list[npt.NDArray[np.float32]]:
        images = feeds["images"]
        self.batches.append(len(images))
        answers = {"double": images * 2, "total": images.sum(axis=(1, 2))}
        return [answers[name] for name in output_names]


def test_a_large_batch_runs_a_few_images_at_a_time_and_is_answered_whole() -> None:
    session = RecordingSession()
    images = np.arange(5 * 2 * 3, dtype=np.float32).reshape(5, 2, 3)
    double, total = cpu_steps.OnnxNetwork(session, 2).run(["double", "total"], {"images": images})
    assert session.batches == [2, 2, 1]
    np.testing.assert_array_equal(double, images * 2)
    np.testing.assert_array_equal(total, images.sum(axis=(1, 2)))


def test_a_batch_within_the_run_size_is_one_call() -> None:
    session = RecordingSession()
    (double,) = cpu_steps.OnnxNetwork(session, 4).run(
        ["double"], {"images": np.ones((3, 2, 3), np.float32)})
    assert session.batches == [3] and double.shape == (3, 2, 3)


@pytest.mark.parametrize(("parameters", "expected"), [
    ({}, cpu_steps.IMAGES_PER_RUN),
    ({"images_per_run": {"string_value": "8"}}, 8),
    ({"images_per_run": {"string_value": "0"}}, 1),
])
def test_images_per_run_comes_from_the_model_config(parameters: dict[str, Any],
                                                    expected: int) -> None:
    assert cpu_steps.images_per_run({"parameters": parameters}) == expected


def test_the_config_chooses_in_process_steps_with_its_run_size() -> None:
    args = {"model_repository": str(MODELS / "ppocr_v6")}
    backend = ModuleType("triton_python_backend_utils")
    steps = cpu_steps.steps_for(args, {"parameters": {
        "steps_in_process": {"string_value": "true"},
        "images_per_run": {"string_value": "3"}}}, backend)
    assert isinstance(steps, cpu_steps.InProcessSteps) and steps._per_run == 3
    assert isinstance(cpu_steps.steps_for(args, {"parameters": {}}, backend),
                      cpu_steps.TritonSteps)


@pytest.mark.skipif(not (MODELS / "mobilefacenet_onnx" / "1" / "model.onnx").is_file(),
                    reason="model files not prepared (python -m tools.prepare_models)")
def test_a_real_network_answers_in_parts_as_on_the_whole_batch() -> None:
    path = MODELS / "mobilefacenet_onnx" / "1" / "model.onnx"
    network = cpu_steps.OnnxNetwork(cpu_steps.onnx_session(path, 1), per_run=2)
    faces = np.random.default_rng(3).uniform(-1, 1, (5, 3, 112, 112)).astype(np.float32)
    (parts,) = network.run(["embeddings"], {"input": faces})
    (whole,) = network.session.run(["embeddings"], {"input": faces})
    assert parts.shape == whole.shape == (5, whole.shape[1])
    np.testing.assert_allclose(parts, whole, rtol=1e-4, atol=1e-5)


def test_triton_serves_the_models_whose_chosen_config_names_a_task(tmp_path: Path) -> None:
    task = 'parameters { key: "task" value: { string_value: "detection" } }\n'
    configs = {"entry/config.pbtxt": task, "step/config.pbtxt": "",
               "fused/config.pbtxt": "", "fused/configs/cpu.pbtxt": task,
               "gpu_only/config.pbtxt": task, "gpu_only/configs/cpu.pbtxt": ""}
    for path, text in configs.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    assert served_models(tmp_path, "cpu") == ["entry", "fused"]
    assert served_models(tmp_path, "gpu") == ["entry", "gpu_only"]
    assert served_models(MODELS) == ["mobilenet_v2", "ppocr_v6", "yolox_nano",
                                     "yunet_mobilefacenet"]
