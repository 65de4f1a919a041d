"""Unit tests of the PP-OCRv6 steps without Triton: triton_models.ocr's numpy/OpenCV code
(image bounds, DB post-processing, reading order, line crops, CTC decoding and its character
file, packing), the ppocr_v6 model's whole read path under a stand-in pb_utils with onnxruntime
in place of the step calls, and the CPU step runner."""

from __future__ import annotations

import importlib.util
import math
import sys
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import onnx
import pytest
from onnx import TensorProto, helper

from tests.images import photo
from tools import prepare_models
from triton_models import steps
from triton_models.ocr import db_postprocess, detection, pipeline, reading_order, recognition
from triton_models.steps import Arrays

REPO_ROOT = Path(__file__).resolve().parents[2]
MODELS = REPO_ROOT / "model_repository"
STEP_FILES = {
    name: MODELS / prepare_models.MODELS[name].target
    for name in ("ppocr_v6_det", "ppocr_v6_cls", "ppocr_v6_rec")
}


class FakeTritonError:
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


def load_model(name: str) -> Any:
    """Import model_repository/<name>/1/model.py under a stand-in triton_python_backend_utils."""
    pb_utils = types.ModuleType("triton_python_backend_utils")
    pb_utils.TritonError = FakeTritonError  # type: ignore[attr-defined]
    pb_utils.Tensor = FakeTensor  # type: ignore[attr-defined]
    pb_utils.InferenceResponse = FakeResponse  # type: ignore[attr-defined]
    pb_utils.get_input_tensor_by_name = fake_input  # type: ignore[attr-defined]
    sys.modules["triton_python_backend_utils"] = pb_utils
    path = MODELS / name / "1" / "model.py"
    spec = importlib.util.spec_from_file_location(f"{name}_model", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while the class body runs.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


ocr_model = load_model("ppocr_v6")


def box_of(*corners: tuple[float, float]) -> npt.NDArray[np.float32]:
    return np.array(corners, dtype=np.float32)


# --- image bounds and detector input -------------------------------------------------------------


def test_det_input_size_grows_the_shorter_side_to_736_in_multiples_of_32() -> None:
    # page.png: 736 / 191 = 3.853..., width int(384 * 3.853) = 1479 -> 1472
    assert detection.det_input_size(191, 384) == (736, 1472)
    assert detection.det_input_size(800, 900) == (800, 896)  # no growth, only rounding
    assert detection.det_input_size(10, 10) == (736, 736)
    # growth wins over the cap: a long strip keeps its shorter side at 736
    assert detection.det_input_size(200, 2000, max_side=1024) == (736, 7360)


def test_det_input_size_shrinks_a_large_photo_to_the_longer_side_cap() -> None:
    # a 12-MP photo bounded to 2000 x 1504: 1024 / 2000 = 0.512 -> 1024 x 770 -> 1024 x 768
    assert detection.det_input_size(1504, 2000, max_side=1024) == (768, 1024)
    assert detection.det_input_size(1504, 2000, max_side=4096) == (1504, 1984)  # 62.5 -> 62
    assert detection.det_input_size(1504, 2000) == detection.det_input_size(1504, 2000, 1024)


def test_normalise_maps_0_255_to_minus_1_1_channels_first() -> None:
    image = np.zeros((2, 3, 3), dtype=np.uint8)
    image[..., 0], image[..., 2] = 255, 51
    tensor = detection.normalise(image)
    assert tensor.shape == (3, 2, 3) and tensor.dtype == np.float32
    np.testing.assert_allclose(tensor[:, 0, 0], [1.0, -1.0, 51 / 127.5 - 1], rtol=1e-6)


def test_bound_image_shrinks_a_large_image_and_records_the_ratios() -> None:
    bounded, ratio_h, ratio_w = detection.bound_image(np.zeros((3000, 1000, 3), np.uint8))
    # 2000 / 3000: 2000 x 666 -> 1984 x 672 (rounded to multiples of 32)
    assert bounded.shape == (1984, 672, 3)
    assert ratio_h == pytest.approx(3000 / 1984) and ratio_w == pytest.approx(1000 / 672)
    small, ratio_h, ratio_w = detection.bound_image(np.zeros((100, 200, 3), np.uint8))
    assert small.shape == (100, 200, 3) and (ratio_h, ratio_w) == (1.0, 1.0)


def test_bound_image_grows_a_thin_strip_to_30_then_32_pixels() -> None:
    bounded, ratio_h, ratio_w = detection.bound_image(np.zeros((10, 400, 3), np.uint8))
    # 30 / 10: 30 x 1200 -> 32 x 1216
    assert bounded.shape == (32, 1216, 3)
    assert ratio_h == pytest.approx(10 / 32) and ratio_w == pytest.approx(400 / 1216)


def test_pad_vertically_adds_black_bands_to_flat_images_only() -> None:
    padded, top = detection.pad_vertically(np.full((40, 400, 3), 200, np.uint8))
    # width / height = 10 > 8: target height max(400 / 8, 30) * 2 = 100, bands of 30
    assert top == 30 and padded.shape == (100, 400, 3)
    assert padded[:30].max() == 0 and padded[30:70].min() == 200 and padded[70:].max() == 0
    unpadded, top = detection.pad_vertically(np.zeros((40, 300, 3), np.uint8))
    assert top == 0 and unpadded.shape == (40, 300, 3)


# --- DB post-processing --------------------------------------------------------------------------


def test_db_boxes_on_a_synthetic_probability_map() -> None:
    probabilities = np.zeros((64, 128), dtype=np.float32)
    probabilities[20:30, 10:100] = 0.9  # a line of text
    probabilities[45:55, 10:40] = 0.4  # above the pixel threshold, mean below the box threshold
    probabilities[5:7, 110:112] = 0.95  # a speck, under the minimum size
    boxes, scores = db_postprocess.db_boxes(probabilities, 128, 256)
    # After the 2x2 dilation the contour spans x 10..100, y 20..30 (a 90 x 10 rectangle); unclip
    # moves each side out by 90 * 10 * 1.6 / 200 = 7.2, then the map is scaled by 2 and rounded.
    assert boxes.shape == (1, 4, 2)
    np.testing.assert_array_equal(boxes[0], [[6, 26], [214, 26], [214, 74], [6, 74]])
    # The score is the mean over the dilated rectangle, whose border row and column are 0.
    assert 0.75 < scores[0] < 0.9


def test_db_boxes_follow_rotated_text_clockwise_from_the_top_left() -> None:
    probabilities = np.zeros((200, 200), dtype=np.float32)
    kernel = cv2.boxPoints(((100, 100), (120, 20), 30)).astype(np.int32)
    cv2.fillPoly(probabilities, [kernel], 0.8)
    boxes, _ = db_postprocess.db_boxes(probabilities, 200, 200)
    (box,) = boxes
    np.testing.assert_allclose(box.mean(axis=0), [100, 100], atol=1.5)
    # Filled and dilated, the 120 x 20 kernel covers about 122 x 22 px; unclip moves each side
    # out by 122 * 22 * 1.6 / 288 = 14.9: about 152 x 52.
    assert np.linalg.norm(box[1] - box[0]) == pytest.approx(152, abs=2)
    assert np.linalg.norm(box[3] - box[0]) == pytest.approx(52, abs=2)
    angle = math.degrees(math.atan2(box[1, 1] - box[0, 1], box[1, 0] - box[0, 0]))
    assert angle == pytest.approx(30, abs=1.5)
    assert box[0, 0] < box[1, 0] and box[0, 1] < box[3, 1]  # top-left, top-right ... bottom-left


def test_db_boxes_of_an_empty_map() -> None:
    boxes, scores = db_postprocess.db_boxes(np.zeros((32, 32), np.float32), 32, 32)
    assert boxes.shape == (0, 4, 2) and scores.shape == (0,)


def test_unclip_grows_a_rectangle_by_area_ratio_over_perimeter() -> None:
    grown = db_postprocess.unclip(box_of((0, 0), (100, 0), (100, 20), (0, 20)))
    (cx, cy), (w, h), _ = cv2.minAreaRect(grown.reshape(-1, 1, 2))
    distance = 100 * 20 * 1.6 / 240  # 13.33
    assert cx == pytest.approx(50, abs=0.5) and cy == pytest.approx(10, abs=0.5)
    assert sorted((w, h)) == [
        pytest.approx(20 + 2 * distance, abs=1),
        pytest.approx(100 + 2 * distance, abs=1),
    ]


def test_order_clockwise_starts_at_the_top_left() -> None:
    shuffled = box_of((10, 30), (50, 5), (10, 5), (50, 30))
    np.testing.assert_array_equal(
        db_postprocess.order_clockwise(shuffled), [[10, 5], [50, 5], [50, 30], [10, 30]]
    )


def test_detect_batches_same_size_images_within_the_pixel_cap() -> None:
    calls: list[tuple[int, ...]] = []

    class DetectorSteps:
        def run(self, step: str, inputs: Arrays, outputs: Sequence[str]) -> Arrays:
            batch = inputs["x"]
            calls.append(batch.shape)
            return {outputs[0]: np.zeros((len(batch), 1, *batch.shape[2:]), np.float32)}

    wide = detection.prepare_image(np.zeros((200, 640, 3), np.uint8))  # detector 736 x 2368: 1.7 MP
    square = detection.prepare_image(np.zeros((100, 100, 3), np.uint8))  # detector 736 x 736
    boxes = pipeline.detect([wide, square, wide, wide, wide, wide], DetectorSteps())
    # 8 MP per call: 4 of the 5 wide images, then the fifth; the square one on its own.
    assert calls == [(4, 3, 736, 2368), (1, 3, 736, 2368), (1, 3, 736, 736)]
    assert [b.shape for b in boxes] == [(0, 4, 2)] * 6


# --- reading order -------------------------------------------------------------------------------


def rect(x0: float, y0: float, x1: float, y1: float) -> npt.NDArray[np.float32]:
    return box_of((x0, y0), (x1, y0), (x1, y1), (x0, y1))


def test_reading_order_rows_top_to_bottom_then_left_to_right() -> None:
    boxes = np.stack(
        [
            rect(300, 52, 400, 70),  # 0: row 2, right (slightly lower than its neighbour)
            rect(10, 100, 200, 120),  # 1: row 3
            rect(10, 10, 390, 30),  # 2: row 1
            rect(10, 48, 250, 66),  # 3: row 2, left
        ]
    )
    assert reading_order.reading_order(boxes) == [2, 3, 0, 1]


def test_reading_order_keeps_lines_that_barely_overlap_in_separate_rows() -> None:
    # Lines 2 px apart in overlap out of 20 px height: consecutive text lines, not one row.
    boxes = np.stack([rect(200, 18, 300, 38), rect(10, 0, 100, 20)])
    assert reading_order.reading_order(boxes) == [1, 0]


# --- line crops ----------------------------------------------------------------------------------


def gradient_image(height: int, width: int) -> npt.NDArray[np.uint8]:
    ys, xs = np.mgrid[0:height, 0:width]
    return np.stack([xs % 256, ys % 256, (xs + ys) % 256], axis=2).astype(np.uint8)


def test_crop_line_of_an_upright_box_copies_the_pixels() -> None:
    image = gradient_image(60, 120)
    crop = recognition.crop_line(image, rect(10, 5, 50, 25))
    assert crop.shape == (20, 40, 3)
    np.testing.assert_array_equal(crop, image[5:25, 10:50])


def test_crop_line_rectifies_a_rotated_box() -> None:
    image = np.full((200, 200, 3), 255, dtype=np.uint8)
    corners = cv2.boxPoints(((100, 100), (120, 30), 30))
    cv2.fillPoly(image, [corners.astype(np.int32)], (0, 0, 0))
    crop = recognition.crop_line(image, db_postprocess.order_clockwise(corners.astype(np.float32)))
    assert crop.shape[:2] == (pytest.approx(30, abs=1), pytest.approx(120, abs=1))
    # the rotated dark rectangle fills the rectified crop
    assert crop[3:-3, 3:-3].max() < 60


def test_crop_line_turns_a_vertical_line_to_lie_flat() -> None:
    image = gradient_image(100, 100)
    crop = recognition.crop_line(image, rect(10, 10, 30, 90))  # 20 wide, 80 high
    assert crop.shape == (20, 80, 3)
    np.testing.assert_array_equal(crop, np.rot90(image[10:90, 10:30]))


def test_rec_input_pads_to_the_widest_crop_at_height_48() -> None:
    crops = [np.full((10, 100, 3), 255, np.uint8), np.full((20, 40, 3), 0, np.uint8)]
    batch = recognition.rec_input(crops)
    assert batch.shape == (2, 3, 48, 480)  # 100 / 10 * 48
    np.testing.assert_array_equal(batch[0], 1.0)
    assert (batch[1, :, :, :96] == -1.0).all() and (batch[1, :, :, 96:] == 0.0).all()
    assert recognition.rec_input([crops[1]]).shape == (1, 3, 48, 320)  # never narrower than 320


def test_cls_input_is_48_by_192_and_turns_confident_upside_down_lines() -> None:
    crops = [gradient_image(24, 200), gradient_image(24, 60)]
    assert recognition.cls_input(crops).shape == (2, 3, 48, 192)
    probabilities = np.array([[0.05, 0.95], [0.15, 0.85]], dtype=np.float32)
    turned, kept = recognition.turn_upside_down_lines(crops, probabilities)
    np.testing.assert_array_equal(turned, crops[0][::-1, ::-1])
    np.testing.assert_array_equal(kept, crops[1])


# --- CTC -----------------------------------------------------------------------------------------


def test_ctc_decode_merges_repeats_and_drops_blanks(tmp_path: Path) -> None:
    (tmp_path / "characters.txt").write_text("a\nb\nc", encoding="utf-8")
    charset = recognition.read_charset(tmp_path / "characters.txt")
    assert charset == ["", "a", "b", "c", " "]
    indices = np.array([0, 1, 1, 0, 1, 2, 2, 4, 3, 0])
    probabilities = np.array([0.9, 0.8, 0.6, 0.9, 0.7, 0.5, 0.9, 0.6, 0.4, 0.9], np.float32)
    text, confidence = recognition.ctc_decode(indices, probabilities, charset)
    assert text == "aab c"
    # kept steps: 1 (a 0.8), 4 (a 0.7), 5 (b 0.5), 7 (space 0.6), 8 (c 0.4)
    assert confidence == pytest.approx((0.8 + 0.7 + 0.5 + 0.6 + 0.4) / 5)
    blanks = recognition.ctc_decode(np.zeros(5, np.int64), np.ones(5, np.float32), charset)
    assert blanks == ("", 0.0)


@pytest.mark.skipif(not STEP_FILES["ppocr_v6_rec"].is_file(), reason="run tools.prepare_models")
def test_the_character_file_is_the_recognisers_metadata_as_onnxruntime_reads_it() -> None:
    ort = pytest.importorskip("onnxruntime")
    path = STEP_FILES["ppocr_v6_rec"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    characters = session.get_modelmeta().custom_metadata_map["character"]
    charset = recognition.read_charset(path.parent / recognition.CHARACTERS_FILE)
    assert charset == ["", *characters.splitlines(), " "]
    assert len(charset) == 18710  # the recogniser's class count
    assert charset[1] == "!" and charset[-1] == " "


def test_prepare_models_writes_the_character_file_from_the_metadata() -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph)
    onnx.helper.set_model_props(model, {"character": "a\nb\n€\n中", "other": ""})
    assert prepare_models.recogniser_characters(model) == "a\nb\n€\n中"
    onnx.helper.set_model_props(model, {})
    with pytest.raises(prepare_models.PrepareError, match="character"):
        prepare_models.recogniser_characters(model)


# --- results -------------------------------------------------------------------------------------


def test_to_original_undoes_padding_and_scaling_and_clips() -> None:
    prepared = detection.PreparedImage(np.zeros((100, 400, 3), np.uint8), 30, 0.5, 0.25)
    polygon = reading_order.to_original(rect(8, 32, 500, 60), prepared, 20, 100)
    np.testing.assert_allclose(polygon, [2, 1, 100, 1, 100, 15, 2, 15])


def test_assemble_lines_drops_empty_and_unsure_lines() -> None:
    polygons = [np.full(8, i, np.float32) for i in range(4)]
    readings = [("a", 0.9), (" ", 0.99), ("b", 0.3), ("c", 0.5)]
    lines = reading_order.assemble_lines(readings, polygons)
    assert lines.texts == ["a", "c"]
    np.testing.assert_allclose(lines.confidences, [0.9, 0.5])
    np.testing.assert_array_equal(lines.polygons[:, 0], [0, 3])
    assert reading_order.assemble_lines([], []) is reading_order.EMPTY_LINES


def test_pack_lines_pads_shorter_lists_in_a_multi_image_request() -> None:
    two = reading_order.TextLines(
        ["é", "b"], np.array([0.9, 0.8], np.float32), np.ones((2, 8), np.float32)
    )
    texts, confidences, polygons = reading_order.pack_lines([two, reading_order.EMPTY_LINES])
    assert texts.tolist() == [["é".encode(), b"b"], [b"", b""]]
    assert confidences.tolist() == [[pytest.approx(0.9), pytest.approx(0.8)], [0.0, 0.0]]
    assert polygons.shape == (2, 2, 8) and polygons[1].max() == 0
    empty = reading_order.pack_lines([reading_order.EMPTY_LINES])
    assert empty[0].shape == (1, 0) and empty[2].shape == (1, 0, 8)


# --- the whole read path, onnxruntime standing in for the step calls ------------------------------

needs_models = pytest.mark.skipif(
    not all(path.is_file() for path in STEP_FILES.values()), reason="run tools.prepare_models"
)


class RecordingSteps:
    """onnxruntime on the prepared files in place of the step calls; records (step, shape)."""

    def __init__(self) -> None:
        ort = pytest.importorskip("onnxruntime")
        self.sessions = {
            name: ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            for name, path in STEP_FILES.items()
        }
        self.calls: list[tuple[str, tuple[int, ...]]] = []

    def run(self, step: str, inputs: Arrays, outputs: Sequence[str]) -> Arrays:
        self.calls.append((step, inputs["x"].shape))
        return dict(zip(outputs, self.sessions[step].run(outputs, inputs), strict=True))


@pytest.fixture(scope="module")
def recording_steps() -> RecordingSteps:
    return RecordingSteps()


@pytest.fixture(scope="module")
def onnx_steps(recording_steps: RecordingSteps) -> list[tuple[str, tuple[int, ...]]]:
    return recording_steps.calls


@pytest.fixture(scope="module")
def model(recording_steps: RecordingSteps) -> Any:
    instance = ocr_model.TritonPythonModel()
    instance.initialize({"model_repository": str(MODELS / "ppocr_v6"), "model_version": "1",
                         "model_config": "{}"})  # no steps_in_process: steps through Triton
    instance.steps = recording_steps
    return instance


def image_request(*images: bytes) -> dict[str, npt.NDArray[Any]]:
    return {"IMAGE": np.array([[image] for image in images], dtype=np.object_)}


@needs_models
def test_execute_reads_the_synthetic_text_photo(model: Any) -> None:
    (response,) = model.execute([image_request(photo("synthetic_text.png"))])
    assert response.error is None
    texts = [text.decode() for text in response.outputs["TEXTS"][0]]
    assert texts == ["Hello World 2024", "Invoice #A-1234 Total: 56.78"]
    assert response.outputs["CONFIDENCES"].min() > 0.95
    assert response.outputs["IMAGE_SIZE"].tolist() == [[200, 640]]
    assert response.outputs["IMAGE_STATUS"].tolist() == [[0]]
    # RapidOCR's boxes for this photo: (16, 25) ... and (15, 106), (558, 104), (558, 146) ...
    np.testing.assert_allclose(
        response.outputs["POLYGONS"][0, 1], [15, 106, 558, 104, 558, 146, 15, 148], atol=1
    )


@needs_models
def test_execute_batches_steps_across_requests_and_isolates_a_corrupt_image(
    model: Any, onnx_steps: list[tuple[str, tuple[int, ...]]]
) -> None:
    onnx_steps.clear()
    text = photo("synthetic_text.png")
    blank = cv2.imencode(".png", np.zeros((200, 640, 3), np.uint8))[1].tobytes()
    responses = model.execute(
        [image_request(text), image_request(b"\x89PNG\r\n\x1a\nbroken"), image_request(text, blank)]
    )
    assert [r.error for r in responses] == [None, None, None]
    first, corrupt, pair = (r.outputs for r in responses)
    assert corrupt["IMAGE_STATUS"].tolist() == [[1]] and corrupt["IMAGE_SIZE"].tolist() == [[0, 0]]
    assert corrupt["TEXTS"].shape == (1, 0) and corrupt["POLYGONS"].shape == (1, 0, 8)
    assert pair["IMAGE_STATUS"].tolist() == [[0], [0]]
    assert pair["TEXTS"][0].tolist() == first["TEXTS"][0].tolist()
    assert pair["TEXTS"][1].tolist() == [b"", b""]  # the blank image: padding rows only
    # The three decodable 200x640 images share one detector call; the four lines one cls call.
    steps = [name for name, _ in onnx_steps]
    assert onnx_steps[0] == ("ppocr_v6_det", (3, 3, 736, 2368))
    assert steps.count("ppocr_v6_det") == 1 and steps.count("ppocr_v6_cls") == 1
    assert ("ppocr_v6_cls", (4, 3, 48, 192)) in onnx_steps


# --- the CPU step runner -------------------------------------------------------------------------


def test_intra_op_threads_comes_from_the_config_parameter() -> None:
    assert steps.intra_op_threads({}) == 2
    assert steps.intra_op_threads({"parameters": {"intra_op_threads": {"string_value": "1"}}}) == 1


class RecordingSession:
    """Stands in for onnxruntime: records each call, returns two outputs derived per row."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], tuple[int, ...]]] = []

    def run(self, names: list[str], feeds: dict[str, npt.NDArray[np.float32]]) -> list[Any]:
        batch = feeds["x"]
        self.calls.append((names, batch.shape))
        return [batch[:, 0, 0, 0], batch[:, 0, 0, 0] * 10]


def test_run_grouped_makes_one_call_and_splits_every_output_per_request() -> None:
    session = RecordingSession()
    batches = [np.full((n, 3, 48, 320), n, dtype=np.float32) for n in (2, 1, 3)]
    outputs = steps.OnnxNetwork(session, per_run=32).run_grouped("x", ["a", "b"], batches)
    assert session.calls == [(["a", "b"], (6, 3, 48, 320))]
    assert [[part.tolist() for part in request] for request in outputs] == [
        [[2, 2], [20, 20]],
        [[1], [10]],
        [[3, 3, 3], [30, 30, 30]],
    ]
