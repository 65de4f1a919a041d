"""Unit tests of model_repository's cpu_steps.py (shared by the CPU configurations): networks
run a few images per onnxruntime call and answer as one call on the whole batch would."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

MODELS = Path(__file__).resolve().parents[2] / "model_repository"


def _load_cpu_steps() -> Any:
    spec = importlib.util.spec_from_file_location(
        "cpu_steps_under_test", MODELS / "yolox_nano" / "1" / "cpu_steps.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


cpu_steps = _load_cpu_steps()


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
    double, total = cpu_steps.CpuNetwork(session, 2).run(["double", "total"], {"images": images})
    assert session.batches == [2, 2, 1]
    np.testing.assert_array_equal(double, images * 2)
    np.testing.assert_array_equal(total, images.sum(axis=(1, 2)))


def test_a_batch_within_the_run_size_is_one_call() -> None:
    session = RecordingSession()
    (double,) = cpu_steps.CpuNetwork(session, 4).run(
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


def test_in_process_steps_take_the_run_size_of_the_config() -> None:
    steps = cpu_steps.in_process_steps({"parameters": {
        "steps_in_process": {"string_value": "true"},
        "images_per_run": {"string_value": "3"}}})
    assert steps is not None and steps._per_run == 3
    assert cpu_steps.in_process_steps({"parameters": {}}) is None


@pytest.mark.skipif(not (MODELS / "mobilefacenet_onnx" / "1" / "model.onnx").is_file(),
                    reason="model files not prepared (python -m tools.prepare_models)")
def test_a_real_network_answers_in_parts_as_on_the_whole_batch() -> None:
    network = cpu_steps.cpu_session("mobilefacenet_onnx", 1, per_run=2)
    faces = np.random.default_rng(3).uniform(-1, 1, (5, 3, 112, 112)).astype(np.float32)
    (parts,) = network.run(["embeddings"], {"input": faces})
    (whole,) = network.session.run(["embeddings"], {"input": faces})
    assert parts.shape == whole.shape == (5, whole.shape[1])
    np.testing.assert_allclose(parts, whole, rtol=1e-4, atol=1e-5)
