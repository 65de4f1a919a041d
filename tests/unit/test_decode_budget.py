"""The decode budget in every decoding step of model_repository/: a scan-bomb JPEG gets
IMAGE_STATUS 2 (too complex) without being decoded, every step uses the one budget file
(yolox_preprocess/1/decode_budget.py, linked into the others' folders), and that budget agrees
with the server's header check (server/images.py)."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from server.domain import ImageLimits, InvalidArgumentError
from server.images import inspect_image
from tests.images import encode, photo, png_length_bomb, scan_bomb

MODELS = Path(__file__).resolve().parents[2] / "model_repository"
DECODERS = ("yolox_preprocess", "mobilenet_v2_preprocess", "yunet_mobilefacenet", "ppocr_v6")
LIMITS = ImageLimits(max_bytes=32 << 20, max_pixels=40_000_000)


def load(name: str) -> Any:
    sys.modules.setdefault("triton_python_backend_utils", types.ModuleType("pb_utils"))
    spec = importlib.util.spec_from_file_location(f"{name}_budget_model",
                                                  MODELS / name / "1" / "model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


STEPS = {name: load(name) for name in DECODERS}
SAMPLES = {
    "bomb 6000x6000 x 10000 scans": scan_bomb(),
    "100 scans at 64x64": scan_bomb(64, 64, 100),
    "101 scans at 64x64": scan_bomb(64, 64, 101),
    "18 scans at 6000x6000": scan_bomb(6000, 6000, 18),
    "17 scans at 6000x6000": scan_bomb(6000, 6000, 17),
    "sequential jpeg": photo("obama.jpg"),
    "png": photo("chelsea.png"),
    "bmp": encode("chelsea.png", ".bmp"),
}


def server_refuses(content: bytes) -> bool:
    try:
        inspect_image(content, LIMITS)
    except InvalidArgumentError as err:
        return err.reason == "IMAGE_TOO_COMPLEX"
    return False


BUDGET = MODELS / "yolox_preprocess" / "1" / "decode_budget.py"


@pytest.mark.parametrize("name", DECODERS[1:])
def test_every_step_links_the_one_budget_file(name: str) -> None:
    linked = MODELS / name / "1" / "decode_budget.py"
    assert linked.is_symlink() and linked.resolve() == BUDGET.resolve()


@pytest.mark.parametrize("name", DECODERS)
def test_every_step_agrees_with_the_server_on_every_sample(name: str) -> None:
    step = STEPS[name]
    budget = sys.modules[step.jpeg_too_complex.__module__]
    assert (budget.MAX_JPEG_SCANS, budget.MAX_JPEG_SCAN_PIXELS) == (
        LIMITS.max_jpeg_scans, LIMITS.max_jpeg_scan_pixels)
    verdicts = {label: step.jpeg_too_complex(content) for label, content in SAMPLES.items()}
    assert verdicts == {label: server_refuses(content) for label, content in SAMPLES.items()}
    assert [label for label, refused in verdicts.items() if refused] == [
        "bomb 6000x6000 x 10000 scans", "101 scans at 64x64", "18 scans at 6000x6000"]


def test_every_step_reports_status_2_for_the_bomb_and_decodes_the_rest() -> None:
    items = np.array([[scan_bomb()], [photo("obama.jpg")]], dtype=np.object_)
    *_, yolox_statuses = STEPS["yolox_preprocess"].preprocess_batch(items)
    *_, mobilenet_statuses = STEPS["mobilenet_v2_preprocess"].preprocess_batch(items)
    _, ocr_statuses = STEPS["ppocr_v6"].decode_all(items)
    face_items = [STEPS["yunet_mobilefacenet"].decode_item(bytes(data), 0.6, False)
                  for data in items.reshape(-1)]
    assert yolox_statuses.reshape(-1).tolist() == [2, 0]
    assert mobilenet_statuses.reshape(-1).tolist() == [2, 0]
    assert ocr_statuses == [2, 0]
    assert [item.status for item in face_items] == [2, 0]


def test_a_png_whose_chunk_outruns_its_bytes_is_neither_decoded_nor_served() -> None:
    bomb, cut = png_length_bomb(), photo("chelsea.png")[:-20]
    items = np.array([[bomb], [cut], [photo("chelsea.png")]], dtype=np.object_)
    *_, yolox_statuses = STEPS["yolox_preprocess"].preprocess_batch(items)
    *_, mobilenet_statuses = STEPS["mobilenet_v2_preprocess"].preprocess_batch(items)
    _, ocr_statuses = STEPS["ppocr_v6"].decode_all(items)
    face_items = [STEPS["yunet_mobilefacenet"].decode_item(bytes(data), 0.6, False)
                  for data in items.reshape(-1)]
    assert yolox_statuses.reshape(-1).tolist() == [1, 1, 0]
    assert mobilenet_statuses.reshape(-1).tolist() == [1, 1, 0]
    assert ocr_statuses == [1, 1, 0]
    assert [item.status for item in face_items] == [1, 1, 0]
    for content in (bomb, cut):
        with pytest.raises(InvalidArgumentError) as refused:
            inspect_image(content, LIMITS)
        assert refused.value.reason == "IMAGE_TRUNCATED"
