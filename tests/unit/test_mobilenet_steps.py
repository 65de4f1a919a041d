"""Unit tests of the MobileNetV2 embedding steps (triton_models.mobilenet, the network runner
every network step shares, the ensemble steps' model.py under a stand-in pb_utils) and of the
ImageNet label file; no Triton."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from triton_models import images, mobilenet, steps
from triton_models.serving import read_labels

REPO_ROOT = Path(__file__).resolve().parents[2]
MODELS = REPO_ROOT / "model_repository"
LABELS = MODELS / "mobilenet_v2_postprocess" / "labels.txt"


class FakeTritonError:
    INTERNAL = "INTERNAL"
    INVALID_ARG = "INVALID_ARG"

    def __init__(self, message: str, code: str = INTERNAL) -> None:
        self.message, self.code = message, code


class FakeTensor:
    def __init__(self, name: str, array: npt.NDArray[Any]) -> None:
        self.name, self.array = name, array

    def as_numpy(self) -> npt.NDArray[Any]:
        return self.array


class FakeResponse:
    def __init__(
        self, output_tensors: list[FakeTensor] | None = None, error: FakeTritonError | None = None
    ) -> None:
        self.outputs = {tensor.name: tensor.array for tensor in output_tensors or []}
        self.error = error


def fake_input(request: dict[str, npt.NDArray[Any]], name: str) -> FakeTensor:
    return FakeTensor(name, request[name])


def stand_in_pb_utils() -> types.ModuleType:
    """The names the model.py files use; the real module exists only inside Triton's stub."""
    module = types.ModuleType("triton_python_backend_utils")
    module.TritonError = FakeTritonError  # type: ignore[attr-defined]
    module.Tensor = FakeTensor  # type: ignore[attr-defined]
    module.InferenceResponse = FakeResponse  # type: ignore[attr-defined]
    module.get_input_tensor_by_name = fake_input  # type: ignore[attr-defined]
    module.TritonModelException = RuntimeError  # type: ignore[attr-defined]
    return module


def load_model(name: str, pb_utils: types.ModuleType) -> Any:
    """Import model_repository/<name>/1/model.py under a unique module name."""
    sys.modules["triton_python_backend_utils"] = pb_utils
    path = MODELS / name / "1" / "model.py"
    spec = importlib.util.spec_from_file_location(f"{name}_model", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while the class body runs.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def encode(image: npt.NDArray[np.uint8], ext: str = ".png") -> bytes:
    ok, buffer = cv2.imencode(ext, image)
    assert ok
    return bytes(buffer.tobytes())


PB_UTILS = stand_in_pb_utils()
pre = load_model("mobilenet_v2_preprocess", PB_UTILS)
post = load_model("mobilenet_v2_postprocess", PB_UTILS)


# --- preprocess --------------------------------------------------------------------------------


def test_centre_crop_takes_the_middle_224_columns() -> None:
    # 256 x 512 keeps its size; the crop starts at column (512 - 224) / 2 = 144.
    image = np.zeros((256, 512, 3), dtype=np.uint8)
    image[:, 256:] = 255
    crop = mobilenet.resize_and_crop(image)
    assert crop.shape == (224, 224, 3)
    assert np.all(crop[:, : 256 - 144] == 0) and np.all(crop[:, 256 - 144 :] == 255)


def test_resize_and_crop_of_a_small_image_enlarges_it() -> None:
    image = np.full((10, 20, 3), 77, dtype=np.uint8)
    crop = mobilenet.resize_and_crop(image)
    assert crop.shape == (224, 224, 3) and np.all(crop == 77)


def test_an_extreme_strip_is_cut_to_its_middle_before_resizing() -> None:
    strip = np.zeros((2, 3000, 3), dtype=np.uint8)
    strip[:, 1500:] = 255
    crop = mobilenet.resize_and_crop(strip)
    # The middle 32 columns are kept and enlarged 128 times (to 256 x 4096): the crop shows the
    # dark-to-bright edge at its centre, blurred over 128 px by the bilinear enlargement.
    assert crop.shape == (224, 224, 3)
    row = crop[0, :, 0].astype(int)
    assert np.all(crop[:, :48] == 0) and np.all(crop[:, -48:] == 255)
    assert np.all(np.diff(row) >= 0) and abs(row[112] - 128) <= 4


def test_normalise_swaps_to_rgb_and_applies_imagenet_mean_and_std() -> None:
    pixel = np.array([[[255, 0, 128]]], dtype=np.uint8)  # B, G, R
    tensor = mobilenet.normalise(pixel)
    assert tensor.shape == (3, 1, 1) and tensor.dtype == np.float32
    expected = [(128 / 255 - 0.485) / 0.229, (0 - 0.456) / 0.224, (1 - 0.406) / 0.225]
    np.testing.assert_allclose(tensor[:, 0, 0], expected, rtol=1e-6)


@pytest.mark.parametrize("data", [b"", b"not an image", b"\x89PNG\r\n\x1a\n truncated"])
def test_decode_image_returns_none_for_undecodable_bytes(data: bytes) -> None:
    assert images.decode(data) == (None, images.STATUS_UNDECODABLE)


def test_decode_image_expands_grey_to_three_channels() -> None:
    decoded, _ = images.decode(encode(np.full((5, 6), 90, dtype=np.uint8)))
    assert decoded is not None and decoded.shape == (5, 6, 3)


def test_preprocess_execute_flags_a_bad_image_and_keeps_the_others() -> None:
    good = encode(np.full((300, 400, 3), 200, dtype=np.uint8))
    items = np.array([[good], [b"garbage"], [good]], dtype=np.object_)
    (response,) = pre.TritonPythonModel().execute([{"IMAGE": items}])
    assert response.error is None
    assert response.outputs["IMAGE_STATUS"].tolist() == [[0], [1], [0]]
    assert response.outputs["IMAGE_SIZE"].tolist() == [[300, 400], [0, 0], [300, 400]]
    assert response.outputs["IMAGE_STATUS"].dtype == np.int32
    images = response.outputs["IMAGES"]
    assert images.shape == (3, 3, 224, 224) and images.dtype == np.float32
    assert not np.any(images[1])
    assert images[0, 0, 0, 0] == pytest.approx((200 / 255 - 0.485) / 0.229, rel=1e-6)


# --- postprocess -------------------------------------------------------------------------------


def test_softmax_of_known_logits_is_stable_for_large_values() -> None:
    logits = np.array([1000.0, 1000.0 + np.log(3.0), 1000.0], dtype=np.float32)
    np.testing.assert_allclose(mobilenet.softmax(logits), [0.2, 0.6, 0.2], rtol=1e-4)


def test_top_k_is_best_first_and_ties_keep_the_lower_class_first() -> None:
    probabilities = np.array([0.1, 0.3, 0.1, 0.5], dtype=np.float32)
    result = mobilenet.top_k(probabilities, 3)
    assert result.class_ids.tolist() == [3, 1, 0]
    np.testing.assert_allclose(result.scores, [0.5, 0.3, 0.1])
    assert result.class_ids.dtype == np.int32


@pytest.mark.parametrize("k", [0, -1, 1001])
def test_top_k_out_of_range_is_rejected(k: int) -> None:
    with pytest.raises(ValueError, match="TOP_K"):
        mobilenet.check_top_k(k)


def test_postprocess_image_normalises_the_embedding() -> None:
    logits = np.zeros(1000, dtype=np.float32)
    logits[967] = 10.0
    features = np.zeros(1280, dtype=np.float32)
    features[:2] = (3.0, 4.0)
    embedding, classes = mobilenet.postprocess_image(logits, features, 0, 2)
    np.testing.assert_allclose(embedding[:3], [0.6, 0.8, 0.0])
    assert classes.class_ids.tolist() == [967, 0]
    assert classes.scores[0] == pytest.approx(np.exp(10) / (np.exp(10) + 999))


def test_postprocess_image_of_an_undecoded_image_is_empty() -> None:
    features = np.ones(1280, dtype=np.float32)
    logits = np.ones(1000, dtype=np.float32)
    embedding, classes = mobilenet.postprocess_image(logits, features, 1, 5)
    assert embedding.shape == (1280,) and not np.any(embedding)
    assert classes.class_ids.shape == (0,) and classes.scores.shape == (0,)


def test_labels_are_the_1000_imagenet_classes_in_torchvision_order() -> None:
    labels = read_labels(LABELS)
    assert len(labels) == 1000 and len(set(labels)) == 1000
    assert labels[0] == "tench" and labels[999] == "toilet tissue"
    assert labels[281:286] == ["tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"]
    assert labels[967:969] == ["espresso", "cup"]


def test_postprocess_execute_pads_top_k_lists_and_rejects_a_bad_top_k() -> None:
    model = post.TritonPythonModel()
    model.initialize({"model_repository": str(LABELS.parent), "model_config": "{}"})
    logits = np.zeros((3, 1000), dtype=np.float32)
    logits[:, 285], logits[:, 281] = 5.0, 4.0

    def request(ks: list[int], statuses: list[int]) -> dict[str, npt.NDArray[Any]]:
        n = len(ks)
        return {
            "LOGITS": logits[:n],
            "FEATURES": np.ones((n, 1280), dtype=np.float32),
            "IMAGE_STATUS": np.array(statuses, dtype=np.int32)[:, None],
            "TOP_K": np.array(ks, dtype=np.int32)[:, None],
        }

    good, bad = model.execute([request([2, 1, 3], [0, 0, 1]), request([0], [0])])
    assert good.error is None
    assert good.outputs["CLASS_IDS"].tolist() == [[285, 281], [285, -1], [-1, -1]]
    assert good.outputs["LABELS"].tolist() == [
        [b"Egyptian cat", b"tabby"],
        [b"Egyptian cat", b""],
        [b"", b""],
    ]
    scores = good.outputs["SCORES"]
    assert scores[1, 1] == 0.0 and scores[0, 0] > scores[0, 1] > 0
    embeddings = good.outputs["EMBEDDING"]
    assert embeddings.shape == (3, 1280)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), [1, 1, 0], rtol=1e-6)
    assert bad.error is not None and bad.error.code == FakeTritonError.INVALID_ARG
    assert "TOP_K" in bad.error.message


def test_postprocess_refuses_a_label_file_of_the_wrong_length(tmp_path: Path) -> None:
    (tmp_path / "labels.txt").write_text("a\nb\n")
    with pytest.raises(ValueError, match="2 names"):
        post.TritonPythonModel().initialize({"model_repository": str(tmp_path)})


# --- network (CPU configuration) ---------------------------------------------------------------


class RecordingSession:
    """Stands in for onnxruntime: records each call; output 0 echoes each row's first value."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, ...]] = []

    def run(self, names: list[str], feeds: dict[str, npt.NDArray[np.float32]]) -> list[Any]:
        (batch,) = feeds.values()
        self.calls.append(batch.shape)
        first = batch.reshape(len(batch), -1)[:, :1]
        return [first, first * 2]


def test_run_grouped_makes_one_call_per_input_shape_and_keeps_request_order() -> None:
    session = RecordingSession()
    batches = [
        np.full((1, 3, 64, 96), 1, dtype=np.float32),
        np.full((2, 3, 32, 32), 2, dtype=np.float32),
        np.full((3, 3, 64, 96), 3, dtype=np.float32),
    ]
    results = steps.OnnxNetwork(session, per_run=32).run_grouped("input", ["a", "b"], batches)
    assert sorted(session.calls) == [(2, 3, 32, 32), (4, 3, 64, 96)]
    assert [len(outputs) for outputs in results] == [2, 2, 2]
    assert [outputs[0].ravel().tolist() for outputs in results] == [[1], [2, 2], [3, 3, 3]]
    assert results[2][1].ravel().tolist() == [6, 6, 6]


def test_intra_op_threads_comes_from_the_config_parameter() -> None:
    assert steps.intra_op_threads({}) == 2
    config = {"parameters": {"intra_op_threads": {"string_value": "3"}}}
    assert steps.intra_op_threads(config) == 3


@pytest.mark.parametrize("step", ["mobilenet_v2_onnx", "yunet_onnx", "mobilefacenet_onnx",
                                  "ppocr_v6_det", "ppocr_v6_cls", "ppocr_v6_rec"])
def test_every_network_step_runs_the_same_cpu_runner(step: str) -> None:
    # One file, linked from each step (git keeps the link), never a copy that can drift.
    linked = MODELS / step / "1" / "model.py"
    assert linked.is_symlink()
    assert linked.resolve() == (MODELS / "yolox_nano_onnx" / "1" / "model.py").resolve()


# --- configurations ----------------------------------------------------------------------------

NETWORK_STEPS = {
    "mobilenet_v2_onnx": "mobilenet_v2",
    "yunet_onnx": "yunet",
    "mobilefacenet_onnx": "mobilefacenet",
}


def read_config(path: Path) -> Any:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def tensors(values: Any) -> list[tuple[str, int, list[int]]]:
    return [(value.name, value.data_type, list(value.dims)) for value in values]


@pytest.mark.parametrize("step", sorted(NETWORK_STEPS))
def test_gpu_and_cpu_configs_declare_the_onnx_files_tensors(step: str) -> None:
    """The GPU config (native onnxruntime, not runnable here) and the CPU one agree, and both
    match the ONNX file's own input and output names and shapes, batch dimension first."""
    onnx = pytest.importorskip("onnx")
    from tools import prepare_models

    gpu = read_config(MODELS / step / "config.pbtxt")
    cpu = read_config(MODELS / step / "configs" / "cpu.pbtxt")
    assert (gpu.name, gpu.platform, cpu.name, cpu.backend) == (
        step,
        "onnxruntime_onnx",
        step,
        "python",
    )
    assert gpu.max_batch_size == cpu.max_batch_size == 32
    assert tensors(gpu.input) == tensors(cpu.input)
    assert tensors(gpu.output) == tensors(cpu.output)
    source = prepare_models.default_cache() / prepare_models.MODELS[NETWORK_STEPS[step]].filename
    if not source.is_file():
        pytest.skip(f"{source.name} not cached")
    graph = onnx.load(str(source)).graph

    def dims(value: Any) -> list[int]:
        # Symbolic dimensions are variable (-1) for Triton; dim 0 is the batch.
        shape = value.type.tensor_type.shape.dim[1:]
        return [d.dim_value if d.HasField("dim_value") else -1 for d in shape]

    def compatible(onnx_dims: list[int], config_dims: list[int]) -> bool:
        # Triton's onnxruntime backend lets a config fix a dimension the file leaves symbolic.
        return len(onnx_dims) == len(config_dims) and all(
            o in (-1, c) for o, c in zip(onnx_dims, config_dims, strict=True)
        )

    for values, declared in ((graph.input, gpu.input), (graph.output, gpu.output)):
        by_name = {t.name: list(t.dims) for t in declared}
        assert sorted(by_name) == sorted(v.name for v in values)
        for value in values:
            assert compatible(dims(value), by_name[value.name]), (value.name, by_name)


@pytest.mark.parametrize("model", ["mobilenet_v2", "yunet_mobilefacenet"])
def test_top_level_models_carry_task_and_status_outputs(model: str) -> None:
    config = read_config(MODELS / model / "config.pbtxt")
    parameters = {key: value.string_value for key, value in config.parameters.items()}
    assert parameters == {
        "mobilenet_v2": {"task": "embedding", "output_dimension": "1280"},
        "yunet_mobilefacenet": {"task": "faces", "output_dimension": "128"},
    }[model]
    assert config.max_batch_size == 32
    inputs = {t.name: (t.data_type, list(t.dims)) for t in config.input}
    outputs = {t.name: (t.data_type, list(t.dims)) for t in config.output}
    assert inputs["IMAGE"] == (13, [1])  # TYPE_STRING
    assert outputs["IMAGE_STATUS"] == (8, [1]) and outputs["IMAGE_SIZE"] == (8, [2])  # INT32
