"""The CPU configurations of the top-level models (configs/cpu.pbtxt: yolox_nano and
mobilenet_v2 fused into one step, yunet_mobilefacenet and ppocr_v6 running their network steps
in their own process) answer exactly what config.pbtxt answers — the ensembles and BLS calls
the GPU configuration keeps — for the same images, a batch mixing good and undecodable images
included. config.pbtxt runs here on the steps' CPU configurations, in a Triton of its own."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from tritonclient.grpc import InferenceServerClient, InferInput
from tritonclient.grpc.aio import InferenceServerClient as AioInferenceServerClient
from tritonclient.utils import InferenceServerException

from tests.images import photo
from tests.integration.bad_inputs import CORRUPT_PNG
from tests.integration.conftest import ROOT, free_port
from tools.local_triton import start_triton

MODELS = ROOT / "model_repository"
STEPS = {"yolox_nano": ("yolox_preprocess", "yolox_nano_onnx", "yolox_postprocess"),
         "mobilenet_v2": ("mobilenet_v2_preprocess", "mobilenet_v2_onnx",
                          "mobilenet_v2_postprocess"),
         "yunet_mobilefacenet": ("yunet_onnx", "mobilefacenet_onnx"),
         "ppocr_v6": ("ppocr_v6_det", "ppocr_v6_cls", "ppocr_v6_rec")}
IMAGES = [photo("obama.jpg"), CORRUPT_PNG, photo("coffee.png"), photo("synthetic_text.png")]


@pytest.fixture(scope="module")
def ensemble_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    repository = tmp_path_factory.mktemp("ensembles")
    for model, steps in STEPS.items():
        for name in (model, *steps):
            shutil.copytree(MODELS / name, repository / name, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.onnx"))
            for onnx in (MODELS / name).glob("*/*.onnx"):
                (repository / onnx.relative_to(MODELS)).symlink_to(onnx.resolve())
        (repository / model / "configs" / "cpu.pbtxt").unlink()  # config.pbtxt loads instead
    triton = start_triton(http_port=free_port(), grpc_port=free_port(),
                          metrics_port=free_port(), log_path=Path(repository) / "triton.log",
                          model_repository=repository, all_models=True)
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
        datatype = {np.dtype(np.float32): "FP32", np.dtype(np.int32): "INT32",
                    np.dtype(np.bool_): "BOOL"}[value.dtype]
        tensor = InferInput(name, list(value.shape), datatype)
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
    ("yunet_mobilefacenet", {"SCORE_THRESHOLD": np.full((4, 1), 0.6, np.float32),
                             "INCLUDE_EMBEDDINGS": np.ones((4, 1), np.bool_)}),
    ("ppocr_v6", {}),
])
def test_cpu_configuration_equals_config_pbtxt(triton_url: str, ensemble_url: str, model: str,
                               extra: dict[str, np.ndarray]) -> None:
    fused, ensemble = _infer(triton_url, model, extra), _infer(ensemble_url, model, extra)
    assert fused.keys() == ensemble.keys()
    assert fused["IMAGE_STATUS"].reshape(-1).tolist() == [0, 1, 0, 0]
    for name, value in ensemble.items():
        if value.dtype == np.object_:
            assert fused[name].tolist() == value.tolist(), name
        else:
            np.testing.assert_allclose(fused[name], value, rtol=1e-4, atol=1e-3, err_msg=name)


def _request(image: bytes, options: dict[str, np.ndarray]) -> list[InferInput]:
    tensor = InferInput("IMAGE", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[image]], dtype=np.object_))
    inputs = [tensor]
    for name, value in options.items():
        option = InferInput(name, [1, 1], "FP32" if value.dtype == np.float32 else "INT32")
        option.set_data_from_numpy(value.reshape(1, 1))
        inputs.append(option)
    return inputs


@pytest.mark.parametrize(("model", "good", "bad", "named"), [
    ("yolox_nano", {"SCORE_THRESHOLD": np.float32(0.25), "IOU_THRESHOLD": np.float32(0.45)},
     {"SCORE_THRESHOLD": np.float32(1.5), "IOU_THRESHOLD": np.float32(0.45)}, "SCORE_THRESHOLD"),
    ("mobilenet_v2", {"TOP_K": np.int32(5)}, {"TOP_K": np.int32(0)}, "TOP_K"),
])
async def test_a_fused_models_bad_option_fails_only_its_own_request(
        triton_url: str, model: str, good: dict[str, np.generic], bad: dict[str, np.generic],
        named: str) -> None:
    """Requests sent together (Triton may hand them to one execute): the one whose option is out
    of range gets INVALID_ARG naming it, the others their answers."""
    options = [good, bad, good, good]
    async with AioInferenceServerClient(triton_url) as client:
        answers = await asyncio.gather(*(
            client.infer(model, _request(photo("coffee.png"),
                                         {k: np.asarray(v) for k, v in given.items()}))
            for given in options), return_exceptions=True)
    refused = answers[1]
    assert isinstance(refused, InferenceServerException), refused
    assert named in str(refused.message()) and "INVALID_ARG" in str(refused.status())
    for answer in (answers[0], *answers[2:]):
        assert not isinstance(answer, BaseException), answer
        assert answer.as_numpy("IMAGE_STATUS").reshape(-1).tolist() == [0]


def test_the_cpu_configuration_loads_only_the_models_requests_reach(triton_url: str) -> None:
    """The step models of the GPU shape stay in the repository, unloaded: on the CPU
    configuration the entry models run their networks themselves."""
    with InferenceServerClient(triton_url) as client:
        index = client.get_model_repository_index(as_json=True)["models"]
    ready = sorted(model["name"] for model in index if model.get("state") == "READY")
    assert ready == ["header_detector", "mobilenet_v2", "ppocr_v6", "yolox_nano",
                     "yunet_mobilefacenet"]
    assert {"yolox_nano_onnx", "ppocr_v6_det", "mobilefacenet_onnx"} <= {
        model["name"] for model in index}
