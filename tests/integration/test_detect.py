"""Unary Detect through the real server and the real local Triton, on real photos, checked
against an independent in-process onnxruntime run of the same model."""

from __future__ import annotations

import pytest

from tests import reference_yolox
from tests.images import decode, encode, photo
from vision.v1 import detection_pb2
from vision_client import VisionClient


@pytest.mark.parametrize(
    ("name", "label", "min_score"),
    [
        ("astronaut.png", "person", 0.85),
        ("coffee.png", "cup", 0.5),
        ("motorcycle_left.png", "motorcycle", 0.5),
        ("chelsea.png", "cat", 0.5),
    ],
)
async def test_photos_match_in_process_reference(
    client: VisionClient, name: str, label: str, min_score: float
) -> None:
    response = await client.detect(photo(name))
    top = response.detections[0]
    assert (top.label, top.score >= min_score) == (label, True), response
    image = decode(name)
    height, width = image.shape[:2]
    assert (response.image_size.width, response.image_size.height) == (width, height)
    assert response.model.name == "yolox_nano"
    expected = reference_yolox.detect(image)
    assert [d.label for d in response.detections] == [d.label for d in expected]
    for got, want in zip(response.detections, expected, strict=True):
        box = (got.box.x_min, got.box.y_min, got.box.x_max, got.box.y_max)
        assert max(abs(a - b) for a, b in zip(box, want.box, strict=True)) <= 1.0, (box, want)
        assert abs(got.score - want.score) < 1e-3
        norm = got.normalized_box
        assert norm.x_min == pytest.approx(got.box.x_min / width, abs=1e-6)
        assert norm.y_max == pytest.approx(got.box.y_max / height, abs=1e-6)


async def test_options_reach_the_model_and_the_shaping(client: VisionClient) -> None:
    everything = await client.detect(photo("coffee.png"),
                                     detection_pb2.DetectionOptions(score_threshold=0.01))
    default = await client.detect(photo("coffee.png"))
    assert len(everything.detections) > len(default.detections)
    assert min(d.score for d in everything.detections) >= 0.01
    only_table = await client.detect(
        photo("coffee.png"),
        detection_pb2.DetectionOptions(class_allowlist=["dining table"], max_detections=1))
    assert [d.label for d in only_table.detections] == ["dining table"]


async def test_jpeg_webp_and_bmp_inputs(client: VisionClient) -> None:
    for ext in (".jpg", ".webp", ".bmp"):
        response = await client.detect(encode("astronaut.png", ext))
        assert response.detections[0].label == "person", ext
