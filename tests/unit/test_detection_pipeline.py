"""The detection pipeline with a fake detector: option defaults and validation, the image check
before any inference, and result shaping (allow-list, top-k)."""

from __future__ import annotations

import math

import pytest

from server.domain import (
    Box,
    Detection,
    DetectionResult,
    DetectOptions,
    DetectOptionsInput,
    ImageLimits,
    InvalidArgumentError,
    ModelNotFoundError,
    ModelRef,
)
from server.pipeline.detection import DetectionConfig, DetectionPipeline
from server.pipeline.options import ModelChoice
from tests.images import photo

CONFIG = DetectionConfig(
    models=ModelChoice(frozenset({"yolox_nano"}), "yolox_nano"), default_score_threshold=0.25,
    default_iou_threshold=0.45, default_max_detections=100,
    limits=ImageLimits(max_bytes=32 << 20, max_pixels=40_000_000),
)


class FakeDetector:
    def __init__(self) -> None:
        self.calls: list[DetectOptions] = []

    async def detect(self, content: bytes, options: DetectOptions, request_id: str,
                     timeout_s: float | None) -> DetectionResult:
        self.calls.append(options)
        return DetectionResult(
            detections=(
                Detection("cup", 41, 0.5, Box(1, 2, 3, 4)),
                Detection("person", 0, 0.9, Box(0, 0, 10, 10)),
                Detection("cup", 41, 0.7, Box(5, 5, 6, 6)),
            ),
            width=20, height=10, model=options.model,
        )


def given(**kwargs: object) -> DetectOptionsInput:
    return DetectOptionsInput(model=ModelRef(str(kwargs.pop("name", ""))), **kwargs)  # type: ignore[arg-type]


async def test_defaults_are_filled_in_and_results_sorted() -> None:
    fake = FakeDetector()
    result = await DetectionPipeline(fake, CONFIG).detect(photo("chelsea.png"), given(), "r", None)
    (options,) = fake.calls
    assert (options.model, options.score_threshold, options.iou_threshold,
            options.max_detections) == (ModelRef("yolox_nano"), 0.25, 0.45, 100)
    assert [d.score for d in result.detections] == [0.9, 0.7, 0.5]


async def test_allowlist_and_max_detections() -> None:
    pipeline = DetectionPipeline(FakeDetector(), CONFIG)
    result = await pipeline.detect(
        photo("chelsea.png"), given(class_allowlist=("cup",), max_detections=1), "r", None)
    assert [(d.label, d.score) for d in result.detections] == [("cup", 0.7)]


@pytest.mark.parametrize(
    ("kwargs", "fields"),
    [
        ({"score_threshold": 1.5}, ["options.score_threshold"]),
        ({"iou_threshold": -0.1}, ["options.iou_threshold"]),
        ({"score_threshold": math.nan}, ["options.score_threshold"]),
        ({"max_detections": 1001}, ["options.max_detections"]),
        ({"class_allowlist": ("cup", " ")}, ["options.class_allowlist[1]"]),
        ({"score_threshold": 2.0, "max_detections": -1},
         ["options.score_threshold", "options.max_detections"]),
    ],
)
async def test_bad_options_name_their_fields(kwargs: dict[str, object], fields: list[str]) -> None:
    fake = FakeDetector()
    with pytest.raises(InvalidArgumentError) as caught:
        await DetectionPipeline(fake, CONFIG).detect(photo("chelsea.png"), given(**kwargs), "r",
                                                     None)
    assert [f"{v.input.value}.{v.path}" for v in caught.value.violations] == fields
    assert fake.calls == []


async def test_unknown_model_is_not_found_before_inference() -> None:
    fake = FakeDetector()
    with pytest.raises(ModelNotFoundError) as caught:
        await DetectionPipeline(fake, CONFIG).detect(photo("chelsea.png"), given(name="yolo9000"),
                                                     "r", None)
    assert caught.value.path == "model.name"
    assert fake.calls == []


async def test_bad_image_never_reaches_the_detector() -> None:
    fake = FakeDetector()
    with pytest.raises(InvalidArgumentError):
        await DetectionPipeline(fake, CONFIG).detect(b"not an image", given(), "r", None)
    assert fake.calls == []
