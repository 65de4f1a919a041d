"""Unit tests of the YOLOX-nano steps: triton_models.yolox and the model.py files under a
stand-in pb_utils, and the model preparation (batch-dynamic ONNX edit, SHA-256 pin,
idempotence)."""

from __future__ import annotations

import importlib.util
import math
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from tools import prepare_models
from triton_models import images, steps, yolox
from triton_models.nms import nms, per_class_nms
from triton_models.resize import YOLOX_PAD_VALUE, letterbox
from triton_models.serving import read_labels

REPO_ROOT = Path(__file__).resolve().parents[2]
MODELS = REPO_ROOT / "model_repository"
CACHED_YOLOX = prepare_models.default_cache() / "yolox_nano.onnx"


class FakeTritonError:
    INVALID_ARG = "INVALID_ARG"

    def __init__(self, message: str, code: str | None = None) -> None:
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


# Only the names the model.py files use; the real module exists only inside Triton's stub.
pb_utils = types.ModuleType("triton_python_backend_utils")
pb_utils.TritonError = FakeTritonError  # type: ignore[attr-defined]
pb_utils.Tensor = FakeTensor  # type: ignore[attr-defined]
pb_utils.InferenceResponse = FakeResponse  # type: ignore[attr-defined]
pb_utils.get_input_tensor_by_name = fake_input  # type: ignore[attr-defined]
pb_utils.TritonModelException = RuntimeError  # type: ignore[attr-defined]


def load_model(name: str) -> Any:
    """Import model_repository/<name>/1/model.py under a unique module name."""
    sys.modules["triton_python_backend_utils"] = pb_utils
    spec = importlib.util.spec_from_file_location(f"{name}_model", MODELS / name / "1" / "model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while the class body runs.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


pre = load_model("yolox_preprocess")
post = load_model("yolox_postprocess")


def solid_image(height: int, width: int, bgr: tuple[int, int, int]) -> npt.NDArray[np.uint8]:
    return np.full((height, width, 3), bgr, dtype=np.uint8)


def encode(image: npt.NDArray[np.uint8], ext: str = ".png") -> bytes:
    ok, buffer = cv2.imencode(ext, image)
    assert ok
    return bytes(buffer.tobytes())


def decode_ok(data: bytes) -> npt.NDArray[np.uint8]:
    image, status = images.decode(data)
    assert image is not None and status == images.STATUS_OK
    return image


# --- preprocess --------------------------------------------------------------------------------


def test_letterbox_landscape_is_scaled_to_width_and_padded_below() -> None:
    tensor, scale = letterbox(solid_image(100, 200, (10, 20, 30)), yolox.INPUT_SIZE)
    assert tensor.shape == (3, 416, 416) and tensor.dtype == np.float32
    assert scale == pytest.approx(416 / 200)
    new_h = int(100 * 416 / 200)  # 208
    # BGR kept as is, raw 0-255 values, image at the top-left.
    assert np.all(tensor[0, :new_h, :] == 10)
    assert np.all(tensor[1, :new_h, :] == 20)
    assert np.all(tensor[2, :new_h, :] == 30)
    assert np.all(tensor[:, new_h:, :] == 114)


def test_letterbox_portrait_is_scaled_to_height_and_padded_right() -> None:
    tensor, scale = letterbox(solid_image(300, 100, (200, 0, 50)), yolox.INPUT_SIZE)
    assert scale == pytest.approx(416 / 300)
    new_w = int(100 * 416 / 300)  # 138
    assert np.all(tensor[0, :, :new_w] == 200)
    assert np.all(tensor[:, :, new_w:] == 114)


def test_letterbox_of_a_square_image_fills_the_canvas() -> None:
    tensor, scale = letterbox(solid_image(832, 832, (1, 2, 3)), yolox.INPUT_SIZE)
    assert scale == pytest.approx(0.5)
    assert not np.any(tensor == 114)


def test_letterbox_keeps_one_pixel_of_an_extreme_aspect_ratio() -> None:
    tensor, _ = letterbox(solid_image(1, 2000, (7, 7, 7)), yolox.INPUT_SIZE)
    assert tensor[0, 0, 0] == 7 and tensor[0, 1, 0] == 114


@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp", ".webp"])
def test_decode_image_reads_common_formats_as_bgr(ext: str) -> None:
    decoded = decode_ok(encode(solid_image(20, 30, (0, 0, 255)), ext))
    assert decoded.shape == (20, 30, 3)
    assert decoded[10, 15, 2] > 240 and decoded[10, 15, 0] < 15


def test_decode_image_expands_grey_and_drops_alpha() -> None:
    grey = decode_ok(encode(np.full((5, 6), 90, dtype=np.uint8)))
    assert grey.shape == (5, 6, 3)
    rgba = decode_ok(encode(np.full((5, 6, 4), 90, dtype=np.uint8)))
    assert rgba.shape == (5, 6, 3)


@pytest.mark.parametrize("data", [b"", b"not an image", b"\x89PNG\r\n\x1a\n truncated"])
def test_decode_image_rejects_undecodable_bytes(data: bytes) -> None:
    assert images.decode(data) == (None, images.STATUS_UNDECODABLE)


def test_preprocess_execute_reports_a_bad_image_in_its_status_and_goes_on() -> None:
    good = np.array([[encode(solid_image(100, 200, (1, 2, 3)))]], dtype=np.object_)
    mixed = np.array([[b"garbage"], [encode(solid_image(100, 200, (1, 2, 3)))]], dtype=np.object_)
    responses = pre.TritonPythonModel().execute([{"IMAGE": good}, {"IMAGE": mixed}])
    assert len(responses) == 2
    assert all(response.error is None for response in responses)
    assert responses[0].outputs["IMAGE_STATUS"].tolist() == [[images.STATUS_OK]]
    assert responses[1].outputs["IMAGE_STATUS"].tolist() == [
        [images.STATUS_UNDECODABLE], [images.STATUS_OK]]
    assert responses[1].outputs["IMAGE_STATUS"].dtype == np.int32
    assert responses[1].outputs["IMAGES"].shape == (2, 3, 416, 416)
    assert (responses[1].outputs["IMAGES"][0] == YOLOX_PAD_VALUE).all()
    assert responses[1].outputs["IMAGE_SIZE"].tolist() == [[0, 0], [100, 200]]
    for outputs, row in ((responses[0].outputs, 0), (responses[1].outputs, 1)):
        assert outputs["IMAGES"].shape[1:] == (3, 416, 416)
        assert outputs["SCALE"][row].tolist() == [pytest.approx(416 / 200)]
        assert outputs["IMAGE_SIZE"][row].tolist() == [100, 200]
        assert outputs["IMAGE_SIZE"].dtype == np.int32


# --- postprocess -------------------------------------------------------------------------------

ANCHORS = 52 * 52 + 26 * 26 + 13 * 13  # 3549


def anchor_index(stride: int, x: int, y: int) -> int:
    offset = {8: 0, 16: 52 * 52, 32: 52 * 52 + 26 * 26}[stride]
    return offset + y * (416 // stride) + x


def raw_with(
    *anchors: tuple[int, int, int, float, float, float, int, float],
) -> npt.NDArray[np.float32]:
    """Hand-made network output: each anchor is (stride, x, y, dx, dy, size_px, cls, score)."""
    raw = np.zeros((ANCHORS, 85), dtype=np.float32)
    for stride, x, y, dx, dy, size_px, cls, score in anchors:
        row = anchor_index(stride, x, y)
        raw[row, 0:2] = (dx, dy)
        raw[row, 2:4] = math.log(size_px / stride)
        raw[row, 4] = 1.0  # objectness 1, so the score is the class score
        raw[row, 5 + cls] = score
    return raw


def test_grids_follow_the_network_anchor_order() -> None:
    grids, strides = yolox.make_grids()
    assert grids.shape == (ANCHORS, 2) and strides.shape == (ANCHORS, 1)
    assert grids[anchor_index(8, 1, 0)].tolist() == [1, 0]
    assert grids[anchor_index(8, 0, 1)].tolist() == [0, 1]
    assert grids[anchor_index(16, 0, 0)].tolist() == [0, 0]
    assert strides[anchor_index(16, 0, 0), 0] == 16
    assert grids[-1].tolist() == [12, 12] and strides[-1, 0] == 32


def test_decode_predictions_on_a_hand_made_tensor() -> None:
    raw = np.zeros((ANCHORS, 85), dtype=np.float32)
    row = anchor_index(8, 5, 3)
    raw[row, 0:2] = 0.5
    raw[row, 2:4] = math.log(4.0)  # exp(log 4) * stride 8 = 32 px
    raw[row, 4] = 0.8
    raw[row, 5 + 17] = 0.5
    raw[row, 5 + 3] = 0.25
    boxes, scores, class_ids = yolox.decode_predictions(raw)
    # centre ((5 + 0.5) * 8, (3 + 0.5) * 8) = (44, 28), size 32
    np.testing.assert_allclose(boxes[row], [28, 12, 60, 44], rtol=1e-6)
    assert class_ids[row] == 17
    assert scores[row] == pytest.approx(0.4)  # objectness x class score
    row32 = anchor_index(32, 2, 1)
    raw[row32, 2:4] = 0.0  # exp(0) * 32
    boxes, _, _ = yolox.decode_predictions(raw)
    np.testing.assert_allclose(boxes[row32], [64 - 16, 32 - 16, 64 + 16, 32 + 16])


def boxes_of(*rows: list[float]) -> npt.NDArray[np.float32]:
    return np.array(rows, dtype=np.float32)


def test_nms_suppresses_an_overlapping_box_of_the_same_class() -> None:
    boxes = boxes_of([0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60])
    scores = np.array([0.6, 0.9, 0.7], dtype=np.float32)
    assert nms(boxes, scores, 0.45).tolist() == [1, 2]
    # IoU of the first two is 81/119 = 0.68: above that threshold both stay.
    assert nms(boxes, scores, 0.7).tolist() == [1, 2, 0]


def test_per_class_nms_keeps_overlapping_boxes_of_different_classes() -> None:
    boxes = boxes_of([0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10])
    scores = np.array([0.9, 0.8, 0.7], dtype=np.float32)
    class_ids = np.array([0, 0, 56], dtype=np.int32)
    kept = per_class_nms(boxes, scores, class_ids, 0.45)
    assert kept.tolist() == [0, 2]  # best of class 0, then class 56; sorted by score
    empty = per_class_nms(boxes[:0], scores[:0], class_ids[:0], 0.45)
    assert empty.shape == (0,)


def test_to_image_space_divides_by_the_scale_and_clips() -> None:
    boxes = boxes_of([-8, 10, 100, 500], [20, 40, 60, 80])
    mapped = yolox.to_image_space(boxes, 2.0, 200, 40)
    np.testing.assert_allclose(mapped, [[0, 5, 40, 200], [10, 20, 30, 40]])


def test_postprocess_image_thresholds_sorts_and_maps_back() -> None:
    raw = raw_with(
        (8, 10, 10, 0.5, 0.5, 32, 0, 0.6),  # person, centre (84, 84) in letterbox pixels
        (8, 11, 10, 0.5, 0.5, 32, 0, 0.9),  # the same person 8 px right: IoU 0.6, one survives
        (16, 20, 5, 0.0, 0.0, 64, 41, 0.8),  # cup
        (32, 1, 1, 0.5, 0.5, 32, 2, 0.2),  # car below the score threshold
    )
    result = yolox.postprocess_image(raw, 0.5, 300, 600, 0.25, 0.45)
    assert result.class_ids.tolist() == [0, 41]
    np.testing.assert_allclose(result.scores, [0.9, 0.8], rtol=1e-6)
    # the person kept is the 0.9 one: centre (92, 84), 32 px, then / 0.5
    np.testing.assert_allclose(result.boxes[0], [152, 136, 216, 200], rtol=1e-6)
    # cup: centre (320, 80), 64 px -> [288, 48, 352, 112] / 0.5, clipped to width 600
    np.testing.assert_allclose(result.boxes[1], [576, 96, 600, 224], rtol=1e-6)
    assert result.boxes.dtype == np.float32 and result.class_ids.dtype == np.int32


def test_postprocess_execute_packs_labels_and_rejects_bad_thresholds() -> None:
    model = post.TritonPythonModel()
    model.labels = read_labels(MODELS / "yolox_postprocess" / "labels.txt")
    assert len(model.labels) == 80 and model.labels[60] == "dining table"

    def request(score: float, status: int = 0) -> dict[str, npt.NDArray[Any]]:
        return {
            "PREDICTIONS": raw_with((16, 20, 5, 0.0, 0.0, 64, 41, 0.8))[None],
            "SCALE": np.array([[1.0]], dtype=np.float32),
            "IMAGE_SIZE": np.array([[416, 416]], dtype=np.int32),
            "IMAGE_STATUS": np.array([[status]], dtype=np.int32),
            "SCORE_THRESHOLD": np.array([[score]], dtype=np.float32),
            "IOU_THRESHOLD": np.array([[0.45]], dtype=np.float32),
        }

    good, bad, nan, undecodable = model.execute(
        [request(0.25), request(1.5), request(float("nan")), request(0.25, status=1)])
    assert undecodable.error is None
    assert undecodable.outputs["CLASS_IDS"].shape == (1, 0)
    assert good.error is None
    assert good.outputs["LABELS"].tolist() == [[b"cup"]]
    assert good.outputs["CLASS_IDS"].tolist() == [[41]]
    assert good.outputs["BOXES"].shape == (1, 1, 4)
    for response in (bad, nan):
        assert response.error is not None and response.error.code == FakeTritonError.INVALID_ARG
        assert "SCORE_THRESHOLD" in response.error.message


def test_pack_detections_pads_shorter_lists_in_a_multi_image_request() -> None:
    one = yolox.Detections(
        boxes=boxes_of([1, 2, 3, 4]),
        scores=np.array([0.5], dtype=np.float32),
        class_ids=np.array([15], dtype=np.int32),
    )
    none = yolox.Detections(
        boxes=np.zeros((0, 4), dtype=np.float32),
        scores=np.zeros(0, dtype=np.float32),
        class_ids=np.zeros(0, dtype=np.int32),
    )
    labels = [f"class{i}" for i in range(80)]
    boxes, scores, class_ids, names = yolox.pack_detections([one, none], labels)
    assert boxes.shape == (2, 1, 4)
    assert class_ids.tolist() == [[15], [-1]]
    assert scores.tolist() == [[0.5], [0.0]]
    assert names.tolist() == [[b"class15"], [b""]]
    empty = yolox.pack_detections([none], labels)
    assert empty[0].shape == (1, 0, 4) and empty[3].shape == (1, 0)


# --- network (CPU configuration) ---------------------------------------------------------------


def test_intra_op_threads_comes_from_the_config_parameter() -> None:
    assert steps.intra_op_threads({}) == 2
    config = {"parameters": {"intra_op_threads": {"string_value": "4"}}}
    assert steps.intra_op_threads(config) == 4


class RecordingSession:
    """Stands in for onnxruntime: records each call, returns a per-row marker."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, ...]] = []

    def run(self, names: list[str], feeds: dict[str, npt.NDArray[np.float32]]) -> list[Any]:
        images = feeds["images"]
        self.calls.append(images.shape)
        return [images[:, 0, 0, :1][:, None, :].repeat(3549, axis=1)]


def test_run_grouped_makes_one_call_and_splits_per_request() -> None:
    session = RecordingSession()
    batches = [np.full((n, 3, 416, 416), n, dtype=np.float32) for n in (1, 3, 2)]
    outputs = steps.OnnxNetwork(session, per_run=32).run_grouped("images", ["output"], batches)
    assert session.calls == [(6, 3, 416, 416)]
    assert [output.shape[0] for (output,) in outputs] == [1, 3, 2]
    assert [float(output[0, 0, 0]) for (output,) in outputs] == [1, 3, 2]


# --- model preparation -------------------------------------------------------------------------

needs_cache = pytest.mark.skipif(not CACHED_YOLOX.is_file(), reason="yolox_nano.onnx not cached")


@pytest.fixture(scope="module")
def prepared_yolox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repository = tmp_path_factory.mktemp("repository")
    spec = prepare_models.MODELS["yolox_nano"]
    return prepare_models.prepare(spec, CACHED_YOLOX.parent, repository)


@needs_cache
def test_prepared_yolox_gives_the_same_output_at_any_batch(prepared_yolox: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, size=(3, 3, 416, 416)).astype(np.float32)

    def runner(path: Path) -> Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]]:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda batch: np.asarray(session.run(["output"], {"images": batch})[0])

    original, edited = runner(CACHED_YOLOX), runner(prepared_yolox)
    single = edited(images[:1])
    assert single.shape == (1, 3549, 85)
    np.testing.assert_array_equal(single, original(images[:1]))
    batch = edited(images)
    assert batch.shape == (3, 3549, 85)
    for i in range(3):
        np.testing.assert_array_equal(batch[i], original(images[i : i + 1])[0])


@needs_cache
def test_prepare_records_the_source_and_skips_work_when_prepared(
    prepared_yolox: Path, tmp_path: Path
) -> None:
    spec = prepare_models.MODELS["yolox_nano"]
    marker = prepared_yolox.parent / prepare_models.SOURCE_SHA_NAME
    assert marker.read_text().strip() == spec.sha256
    repository = prepared_yolox.parents[2]
    # An empty cache folder proves the second run neither reads nor downloads the source.
    again = prepare_models.prepare(spec, tmp_path / "empty-cache", repository)
    assert again == prepared_yolox


def test_prepare_refuses_a_source_with_the_wrong_sha256(tmp_path: Path) -> None:
    spec = prepare_models.MODELS["yolox_nano"]
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / spec.filename).write_bytes(b"not the model")
    with pytest.raises(prepare_models.PrepareError, match="SHA-256"):
        prepare_models.prepare(spec, cache, tmp_path / "repository")
    assert not (tmp_path / "repository" / spec.target).exists()
