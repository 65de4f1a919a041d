"""The fused CPU models (yolox_nano, mobilenet_v2 under configs/cpu.pbtxt) answer exactly what
the ensembles of config.pbtxt answer — the shape the GPU configuration keeps — for the same
images, a batch mixing good and undecodable images included. The ensembles run here on the
steps' CPU configurations, in a Triton of their own."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from tritonclient.grpc import InferenceServerClient, InferInput

from tests.images import photo
from tests.integration.bad_inputs import CORRUPT_PNG
from tests.integration.conftest import ROOT, free_port
from tools.local_triton import start_triton

MODELS = ROOT / "model_repository"
ENSEMBLES = {"yolox_nano": ("yolox_preprocess", "yolox_nano_onnx", "yolox_postprocess"),
             "mobilenet_v2": ("mobilenet_v2_preprocess", "mobilenet_v2_onnx",
                              "mobilenet_v2_postprocess")}
IMAGES = [photo("astronaut.png"), CORRUPT_PNG, photo("coffee.png"), photo("motorcycle_left.png")]


@pytest.fixture(scope="module")
def ensemble_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    repository = tmp_path_factory.mktemp("ensembles")
    for model, steps in ENSEMBLES.items():
        for name in (model, *steps):
            shutil.copytree(MODELS / name, repository / name, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.onnx"))
        for onnx in (MODELS / steps[1]).glob("*/*.onnx"):
            (repository / onnx.relative_to(MODELS)).symlink_to(onnx.resolve())
        (repository / model / "configs" / "cpu.pbtxt").unlink()  # the ensemble loads instead
    triton = start_triton(http_port=free_port(), grpc_port=free_port(),
                          metrics_port=free_port(), log_path=Path(repository) / "triton.log",
                          model_repository=repository)
    try:
        yield triton.grpc_url
    finally:
        triton.stop()


def _infer(url: str, model: str, extra: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    count = len(IMAGES)
    image = InferInput("IMAGE", [count, 1], "BYTES")
    image.set_data_from_numpy(np.array([[data] for data in IMAGES], dtype=np.object_))
    inputs = [image]
    for name, value in extra.items():
        tensor = InferInput(name, list(value.shape), "FP32" if value.dtype == np.float32
                            else "INT32")
        tensor.set_data_from_numpy(value)
        inputs.append(tensor)
    with InferenceServerClient(url) as client:
        metadata = client.get_model_metadata(model, as_json=True)
        result = client.infer(model, inputs)
        return {out["name"]: result.as_numpy(out["name"]) for out in metadata["outputs"]}


@pytest.mark.parametrize(("model", "extra"), [
    ("yolox_nano", {"SCORE_THRESHOLD": np.full((4, 1), 0.25, np.float32),
                    "IOU_THRESHOLD": np.full((4, 1), 0.45, np.float32)}),
    ("mobilenet_v2", {"TOP_K": np.full((4, 1), 5, np.int32)}),
])
def test_fused_equals_ensemble(triton_url: str, ensemble_url: str, model: str,
                               extra: dict[str, np.ndarray]) -> None:
    fused, ensemble = _infer(triton_url, model, extra), _infer(ensemble_url, model, extra)
    assert fused.keys() == ensemble.keys()
    assert fused["IMAGE_STATUS"].reshape(-1).tolist() == [0, 1, 0, 0]
    for name, value in ensemble.items():
        if value.dtype == np.object_:
            assert fused[name].tolist() == value.tolist(), name
        else:
            np.testing.assert_allclose(fused[name], value, rtol=1e-4, atol=1e-3, err_msg=name)
