"""Unit tests of triton_models.faces' numpy/OpenCV code (detector input, YuNet grid decoding,
NMS, alignment, packing), of the yunet_mobilefacenet BLS model's execute() with the two step
models run in-process behind a stand-in pb_utils, and of the YuNet batch edit of the model
preparation."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from tests.images import photo
from tests.unit.test_mobilenet_steps import (
    FakeResponse,
    FakeTensor,
    FakeTritonError,
    encode,
    load_model,
    stand_in_pb_utils,
)
from tools import prepare_models
from triton_models import faces
from triton_models.nms import nms
from triton_models.steps import Arrays, TritonSteps

FloatArray = npt.NDArray[np.float32]
CACHE = prepare_models.default_cache()
STEP_SOURCES = {
    "yunet_onnx": "yunet",
    "mobilefacenet_onnx": "mobilefacenet",
}


class StepResponse:
    """What InferenceRequest.exec() returns: outputs by name, or an error."""

    def __init__(self, outputs: dict[str, FloatArray], error: str | None = None) -> None:
        self.outputs, self.message = outputs, error

    def has_error(self) -> bool:
        return self.message is not None

    def error(self) -> Any:
        return type("Error", (), {"message": lambda _: self.message})()


class Steps:
    """Plays Triton for the BLS calls: records (model, input shape) and answers via handlers."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[int, ...]]] = []
        self.handlers: dict[str, Callable[[FloatArray], dict[str, FloatArray]]] = {}
        self.failing: str | None = None

    def request_class(self) -> type:
        steps = self

        class InferenceRequest:
            def __init__(
                self,
                model_name: str,
                inputs: list[FakeTensor],
                requested_output_names: list[str],
                preferred_memory: object,
            ) -> None:
                self.model_name, self.inputs = model_name, inputs
                self.outputs = requested_output_names

            def exec(self) -> StepResponse:
                (tensor,) = self.inputs
                assert tensor.name == "input"
                steps.calls.append((self.model_name, tensor.array.shape))
                if steps.failing == self.model_name:
                    return StepResponse({}, "step failed")
                result = steps.handlers[self.model_name](tensor.array)
                return StepResponse({name: result[name] for name in self.outputs})

        return InferenceRequest


STEPS = Steps()
PB_UTILS = stand_in_pb_utils()
PB_UTILS.InferenceRequest = STEPS.request_class()  # type: ignore[attr-defined]
PB_UTILS.PreferredMemory = lambda kind, device: (kind, device)  # type: ignore[attr-defined]
PB_UTILS.TRITONSERVER_MEMORY_CPU = "CPU"  # type: ignore[attr-defined]
PB_UTILS.get_output_tensor_by_name = (  # type: ignore[attr-defined]
    lambda response, name: FakeTensor(name, response.outputs[name])
)
face_model = load_model("yunet_mobilefacenet", PB_UTILS)


def faces_model() -> Any:
    """The BLS model as the GPU configuration runs it: its steps called through Triton (here
    the Steps stand-in)."""
    model = face_model.TritonPythonModel()
    model.steps = TritonSteps(PB_UTILS)
    return model


# --- detector input ----------------------------------------------------------------------------


def test_detector_input_keeps_a_small_image_and_pads_to_multiples_of_32() -> None:
    image = np.full((100, 150, 3), (1, 2, 3), dtype=np.uint8)
    tensor, scale = faces.detector_input(image)
    assert scale == 1.0 and tensor.shape == (3, 128, 160) and tensor.dtype == np.float32
    # BGR order kept, raw 0-255 values, image at the top-left, zeros around.
    assert tensor[:, 50, 75].tolist() == [1, 2, 3]
    assert not np.any(tensor[:, 100:, :]) and not np.any(tensor[:, :, 150:])


def test_detector_input_shrinks_the_longest_side_to_the_cap() -> None:
    tensor, scale = faces.detector_input(np.zeros((2000, 3840, 3), dtype=np.uint8))
    assert scale == pytest.approx(0.5)
    assert tensor.shape == (3, 1024, 1920)  # 1000 rows padded to 1024


# --- YuNet decoding ----------------------------------------------------------------------------


def yunet_outputs(height: int, width: int) -> dict[str, FloatArray]:
    """All-zero raw outputs for one image of that (padded) size: every score 0."""
    outputs = {}
    for stride in faces.STRIDES:
        anchors = (height // stride) * (width // stride)
        for kind, size in (("cls", 1), ("obj", 1), ("bbox", 4), ("kps", 10)):
            outputs[f"{kind}_{stride}"] = np.zeros((anchors, size), dtype=np.float32)
    return outputs


def put_face(
    outputs: dict[str, FloatArray],
    width: int,
    stride: int,
    cell: tuple[int, int],
    score: float,
    bbox: tuple[float, float, float, float],
) -> None:
    """One anchor at cell (column, row): cls = score^2, obj = 1, so sqrt(cls * obj) = score;
    landmark n has offsets (n / 10, n / 5)."""
    index = cell[1] * (width // stride) + cell[0]
    outputs[f"cls_{stride}"][index] = score * score
    outputs[f"obj_{stride}"][index] = 1.0
    outputs[f"bbox_{stride}"][index] = bbox
    outputs[f"kps_{stride}"][index] = [v for n in range(5) for v in (n / 10, n / 5)]


def test_decode_detections_on_a_hand_made_grid() -> None:
    outputs = yunet_outputs(64, 96)
    put_face(outputs, 96, 16, (3, 2), 0.9, (0.5, 0.5, math.log(2), math.log(3)))
    boxes, scores, landmarks = faces.decode_detections(outputs, 64, 96, 0.5)
    assert scores.tolist() == [pytest.approx(0.9)]
    # centre ((3 + 0.5) * 16, (2 + 0.5) * 16) = (56, 40); size (2 * 16, 3 * 16) = (32, 48)
    np.testing.assert_allclose(boxes[0], [40, 16, 72, 64], rtol=1e-6)
    expected = [v for n in range(5) for v in ((3 + n / 10) * 16, (2 + n / 5) * 16)]
    np.testing.assert_allclose(landmarks[0], expected, rtol=1e-6)


def test_decode_detections_clips_scores_and_applies_the_threshold() -> None:
    outputs = yunet_outputs(32, 32)
    outputs["cls_8"][0], outputs["obj_8"][0] = 1.7, 1.2  # clipped to 1 each: score 1
    outputs["cls_8"][1], outputs["obj_8"][1] = 0.25, 1.0  # score 0.5: not above 0.5
    outputs["cls_32"][0], outputs["obj_32"][0] = -0.3, 1.0  # clipped to 0
    _, scores, _ = faces.decode_detections(outputs, 32, 32, 0.5)
    assert scores.tolist() == [1.0]


def test_decode_detections_rejects_outputs_of_another_size() -> None:
    with pytest.raises(ValueError, match="anchors"):
        faces.decode_detections(yunet_outputs(64, 64), 32, 64, 0.5)


def test_nms_keeps_the_best_of_overlapping_boxes() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], dtype=np.float32)
    scores = np.array([0.6, 0.9, 0.7], dtype=np.float32)
    assert nms(boxes, scores, 0.3).tolist() == [1, 2]
    assert nms(boxes, scores, 0.7).tolist() == [1, 2, 0]  # IoU 81/119 = 0.68


def test_detect_faces_maps_back_by_the_scale_clips_and_sorts() -> None:
    outputs = yunet_outputs(64, 96)
    put_face(outputs, 96, 8, (1, 1), 0.7, (0.0, 0.0, math.log(4), math.log(4)))
    put_face(outputs, 96, 16, (4, 2), 0.95, (0.5, 0.5, 0.0, 0.0))
    put_face(outputs, 96, 16, (1, 1), 0.3, (0.0, 0.0, 0.0, 0.0))  # below the threshold
    found = faces.detect_faces(outputs, (64, 96), 0.5, (120, 180), 0.6)
    np.testing.assert_allclose(found.scores, [0.95, 0.7], rtol=1e-6)
    # (72, 40) +- 8 -> / 0.5; then (8, 8) +- 16 -> / 0.5, clipped at 0
    np.testing.assert_allclose(found.boxes, [[128, 64, 160, 96], [0, 0, 48, 48]])
    np.testing.assert_allclose(found.landmarks[1][:2], [16, 16])
    assert found.boxes.dtype == np.float32 and found.landmarks.shape == (2, 10)


# --- alignment ---------------------------------------------------------------------------------


def similarity(scale: float, degrees: float, shift: tuple[float, float]) -> FloatArray:
    theta = math.radians(degrees)
    c, s = scale * math.cos(theta), scale * math.sin(theta)
    return np.array([[c, -s, shift[0]], [s, c, shift[1]]], dtype=np.float64)


def apply(matrix: FloatArray, points: FloatArray) -> FloatArray:
    return np.asarray(points @ matrix[:, :2].T + matrix[:, 2], dtype=np.float32)


def test_similarity_transform_recovers_an_exact_similarity() -> None:
    template = faces.ARCFACE_TEMPLATE
    moved = apply(similarity(2.5, 30.0, (100.0, -40.0)), template)
    matrix = faces.similarity_transform(moved, template)
    np.testing.assert_allclose(apply(matrix, moved), template, atol=1e-3)


def test_similarity_transform_is_the_least_squares_fit_of_noisy_points() -> None:
    rng = np.random.default_rng(3)
    source = apply(similarity(3.0, -12.0, (400.0, 220.0)), faces.ARCFACE_TEMPLATE)
    source = (source + rng.normal(0, 2.0, source.shape)).astype(np.float32)
    matrix = faces.similarity_transform(source, faces.ARCFACE_TEMPLATE)
    # The same fit by linear least squares over (a, b, tx, ty).
    rows = [r for x, y in source for r in ([x, -y, 1, 0], [y, x, 0, 1])]
    (a, b, tx, ty), *_ = np.linalg.lstsq(
        np.array(rows), faces.ARCFACE_TEMPLATE.reshape(-1), rcond=None
    )
    np.testing.assert_allclose(matrix, [[a, -b, tx], [b, a, ty]], rtol=1e-4, atol=1e-3)


def test_align_face_with_landmarks_on_the_template_is_the_top_left_crop() -> None:
    image = np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    aligned = faces.align_face(image, faces.ARCFACE_TEMPLATE.reshape(-1))
    assert aligned.shape == (112, 112, 3) and aligned.dtype == np.uint8
    np.testing.assert_array_equal(aligned, image[:112, :112])


def test_align_face_undoes_a_scale_and_shift() -> None:
    image = np.zeros((400, 400, 3), dtype=np.uint8)
    cv2.rectangle(image, (100, 100), (323, 323), (255, 255, 255), -1)  # 112x112 at 2x, (100, 100)
    landmarks = (faces.ARCFACE_TEMPLATE * 2 + 100).reshape(-1)
    aligned = faces.align_face(image, landmarks)
    assert aligned[2:110, 2:110].min() == 255


def test_embedder_input_is_rgb_scaled_to_minus_one_one() -> None:
    face = np.zeros((112, 112, 3), dtype=np.uint8)
    face[..., 0] = 255  # blue
    tensor = faces.embedder_input(face)
    assert tensor.shape == (3, 112, 112) and tensor.dtype == np.float32
    assert tensor[:, 0, 0].tolist() == [-1.0, -1.0, 1.0]


def test_l2_normalise_rows_leaves_zero_rows_alone() -> None:
    rows = faces.l2_normalise_rows(np.array([[3, 4], [0, 0]], dtype=np.float32))
    np.testing.assert_allclose(rows, [[0.6, 0.8], [0.0, 0.0]])


@pytest.mark.parametrize("value", [-0.1, 1.5, float("nan")])
def test_threshold_out_of_range_is_rejected(value: float) -> None:
    with pytest.raises(ValueError, match="SCORE_THRESHOLD"):
        faces.check_threshold(value)


# --- packing -----------------------------------------------------------------------------------


def some_faces(count: int) -> Any:
    return faces.Faces(
        boxes=np.arange(count * 4, dtype=np.float32).reshape(count, 4),
        scores=np.linspace(0.9, 0.7, count).astype(np.float32),
        landmarks=np.ones((count, 10), dtype=np.float32),
    )


def test_pack_faces_pads_to_the_most_faces_with_score_minus_one() -> None:
    two, none = some_faces(2), some_faces(0)
    boxes, scores, landmarks, embeddings = faces.pack_faces(
        [two, none], [np.ones((2, 128), dtype=np.float32), None]
    )
    assert boxes.shape == (2, 2, 4) and landmarks.shape == (2, 2, 10)
    np.testing.assert_allclose(scores, [[0.9, 0.7], [-1.0, -1.0]])
    assert embeddings.shape == (2, 2, 128)
    assert np.all(embeddings[0] == 1) and not np.any(embeddings[1])
    assert not np.any(boxes[1]) and not np.any(landmarks[1])


def test_pack_faces_without_embeddings_has_zero_embedding_rows() -> None:
    _, scores, _, embeddings = faces.pack_faces([some_faces(3)], [None])
    assert scores.shape == (1, 3) and embeddings.shape == (1, 0, 128)
    _, scores, _, embeddings = faces.pack_faces([some_faces(0)], [None])
    assert scores.shape == (1, 0) and embeddings.shape == (1, 0, 128)


def test_embed_all_sends_at_most_32_faces_per_call() -> None:
    calls: list[int] = []

    class FakeSteps:
        def run(self, step: str, inputs: Arrays, outputs: Sequence[str]) -> Arrays:
            calls.append(len(inputs["input"]))
            return {"embeddings": np.ones((len(inputs["input"]), 128), dtype=np.float32)}

    image = np.zeros((300, 300, 3), dtype=np.uint8)
    items = [faces.Item(image, 0.6, True, some_faces(n)) for n in (25, 15)]
    items.append(faces.Item(image, 0.6, False, some_faces(4)))
    faces.embed_all(items, FakeSteps())
    assert calls == [32, 8]
    first, second, third = (item.embeddings for item in items)
    assert first is not None and second is not None and third is None
    assert [first.shape, second.shape] == [(25, 128), (15, 128)]
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, rtol=1e-6)


# --- execute with the real networks in-process -------------------------------------------------

needs_cache = pytest.mark.skipif(
    not all((CACHE / prepare_models.MODELS[m].filename).is_file() for m in STEP_SOURCES.values()),
    reason="YuNet / MobileFaceNet not cached",
)


@pytest.fixture(scope="module")
def real_steps(tmp_path_factory: pytest.TempPathFactory) -> Steps:
    ort = pytest.importorskip("onnxruntime")
    repository = tmp_path_factory.mktemp("repository")
    for step, spec_name in STEP_SOURCES.items():
        path = prepare_models.prepare(prepare_models.MODELS[spec_name], CACHE, repository)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [output.name for output in session.get_outputs()]

        def run(batch: FloatArray, session: Any = session, names: list[str] = names) -> Any:
            return dict(zip(names, session.run(names, {"input": batch}), strict=True))

        STEPS.handlers[step] = run
    return STEPS


def face_request(images: list[bytes], threshold: float = 0.6, embed: bool = True) -> Any:
    n = len(images)
    return {
        "IMAGE": np.array([[image] for image in images], dtype=np.object_),
        "SCORE_THRESHOLD": np.full((n, 1), threshold, dtype=np.float32),
        "INCLUDE_EMBEDDINGS": np.full((n, 1), embed, dtype=np.bool_),
    }


@needs_cache
def test_execute_batches_all_images_and_all_faces(real_steps: Steps) -> None:
    real_steps.calls.clear()
    first, second, third = faces_model().execute(
        [
            face_request([photo("sample4.jpg"), b"garbage", photo("chelsea.png")]),
            face_request([photo("sample5.jpg")]),
            face_request([photo("obama.jpg")], embed=False),
        ]
    )
    assert first.error is None and second.error is None and third.error is None
    assert first.outputs["IMAGE_STATUS"].tolist() == [[0], [1], [0]]
    assert first.outputs["IMAGE_SIZE"].tolist() == [[1448, 1920], [0, 0], [300, 451]]
    scores = first.outputs["SCORES"]
    assert scores.shape == (3, 4)
    assert np.all(scores[0] > 0.6) and np.all(np.diff(scores[0]) <= 0)
    assert np.all(scores[1:] == -1)
    assert first.outputs["EMBEDDINGS"].shape == (3, 4, 128)
    assert second.outputs["SCORES"].shape == (1, 5)
    assert third.outputs["SCORES"].shape == (1, 1) and third.outputs["EMBEDDINGS"].shape == (
        1,
        0,
        128,
    )
    norms = np.linalg.norm(second.outputs["EMBEDDINGS"][0], axis=1)
    np.testing.assert_allclose(norms, 1.0, rtol=1e-5)
    # One YuNet call per distinct input size; the 9 faces that asked for it in one embedding call.
    detector_calls = sorted(shape for model, shape in real_steps.calls if model == "yunet_onnx")
    assert len(detector_calls) == 4 and all(shape[0] == 1 for shape in detector_calls)
    embedder_calls = [shape for model, shape in real_steps.calls if model == "mobilefacenet_onnx"]
    assert embedder_calls == [(9, 3, 112, 112)]


@needs_cache
def test_execute_shares_one_yunet_call_for_equally_sized_images(real_steps: Steps) -> None:
    real_steps.calls.clear()
    responses = faces_model().execute(
        [face_request([photo("obama.jpg")]), face_request([photo("obama.jpg")])]
    )
    assert [r.outputs["SCORES"].shape for r in responses] == [(1, 1), (1, 1)]
    assert [call for call in real_steps.calls if call[0] == "yunet_onnx"] == [
        ("yunet_onnx", (2, 3, 1152, 928))
    ]


@needs_cache
def test_execute_fails_only_the_request_with_a_bad_threshold(real_steps: Steps) -> None:
    good, bad = faces_model().execute(
        [face_request([photo("astronaut.png")]), face_request([photo("astronaut.png")], 1.5)]
    )
    assert good.error is None and good.outputs["SCORES"].shape == (1, 1)
    assert bad.error is not None and bad.error.code == FakeTritonError.INVALID_ARG
    assert "SCORE_THRESHOLD" in bad.error.message


@needs_cache
def test_execute_reports_a_failing_step_on_every_request(real_steps: Steps) -> None:
    real_steps.failing = "mobilefacenet_onnx"
    try:
        responses = faces_model().execute(
            [face_request([photo("astronaut.png")]), face_request([photo("obama.jpg")])]
        )
    finally:
        real_steps.failing = None
    assert all(isinstance(r, FakeResponse) and r.error is not None for r in responses)
    assert "mobilefacenet_onnx: step failed" in responses[0].error.message


def test_an_image_with_no_decodable_bytes_costs_no_step_call() -> None:
    truncated_png = encode(np.full((50, 50, 3), 9, dtype=np.uint8))[:40]
    STEPS.calls.clear()
    (response,) = faces_model().execute([face_request([b"", truncated_png])])
    assert STEPS.calls == []
    assert response.outputs["IMAGE_STATUS"].tolist() == [[1], [1]]
    assert response.outputs["BOXES"].shape == (2, 0, 4)
    assert response.outputs["EMBEDDINGS"].shape == (2, 0, 128)


# --- model preparation -------------------------------------------------------------------------


@needs_cache
def test_prepared_yunet_gives_the_same_output_at_any_batch(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    spec = prepare_models.MODELS["yunet"]
    edited = prepare_models.prepare(spec, CACHE, tmp_path)
    images = np.random.default_rng(1).uniform(0, 255, (3, 3, 96, 160)).astype(np.float32)
    original = ort.InferenceSession(str(CACHE / spec.filename), providers=["CPUExecutionProvider"])
    batched = ort.InferenceSession(str(edited), providers=["CPUExecutionProvider"])
    together = batched.run(None, {"input": images})
    assert together[0].shape == (3, (96 // 8) * (160 // 8), 1)
    for i in range(3):
        alone = original.run(None, {"input": images[i : i + 1]})
        for joint, single in zip(together, alone, strict=True):
            np.testing.assert_array_equal(joint[i], single[0])


def test_a_model_without_a_download_address_must_be_in_the_cache(tmp_path: Path) -> None:
    spec = prepare_models.MODELS["mobilefacenet"]
    with pytest.raises(prepare_models.PrepareError, match="no download address"):
        prepare_models.prepare(spec, tmp_path / "empty", tmp_path / "repository")
