"""The test-only header_detector model (tests/model_repository): sizes from PNG/JPEG headers
equal what OpenCV decodes, and its answer rows follow the detection contract."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT.parent / "shared" / "testdata" / "images"


def _load() -> Any:
    sys.modules.setdefault("triton_python_backend_utils", types.ModuleType("pb_utils_stand_in"))
    path = ROOT / "tests" / "model_repository" / "header_detector" / "1" / "model.py"
    spec = importlib.util.spec_from_file_location("header_detector_model", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


model = _load()


@pytest.mark.parametrize("photo", sorted(p.name for p in IMAGES.iterdir()))
def test_header_size_is_the_decoded_size(photo: str) -> None:
    data = (IMAGES / photo).read_bytes()
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert decoded is not None
    assert model.image_size(data) == decoded.shape[:2]


def test_progressive_jpeg_size() -> None:
    image = np.zeros((37, 53, 3), np.uint8)
    ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    assert ok
    assert model.image_size(encoded.tobytes()) == (37, 53)


def test_answer_rows() -> None:
    png = (IMAGES / "chelsea.png").read_bytes()
    out = model.answer([png, b"not an image", b"\xff\xd8\xff"])
    assert out["IMAGE_STATUS"].tolist() == [[0], [1], [1]]
    assert out["IMAGE_SIZE"].tolist() == [[300, 451], [0, 0], [0, 0]]
    assert out["BOXES"][0].tolist() == [[0.0, 0.0, 451.0, 300.0]]
    assert out["CLASS_IDS"].tolist() == [[0], [-1], [-1]]
    assert out["LABELS"].tolist() == [[b"person"], [b""], [b""]]
