"""The decode budget of the Triton models (triton_models.images): a scan-bomb JPEG gets
IMAGE_STATUS 2 (too complex) without being decoded, every entry model decodes through the one
`decode`, and the budget agrees with the server's header check (server/images.py)."""

from __future__ import annotations

from types import ModuleType

import numpy as np
import pytest

from server.domain import ImageLimits, InvalidArgumentError
from server.images import inspect_image
from tests.images import encode, photo, png_length_bomb, scan_bomb
from triton_models import faces, images, mobilenet, yolox

LIMITS = ImageLimits(max_bytes=32 << 20, max_pixels=40_000_000)
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


@pytest.mark.parametrize("module", [yolox, mobilenet, faces])
def test_every_decoding_model_decodes_through_the_one_budgeted_decode(
    module: ModuleType,
) -> None:
    assert module.decode is images.decode


def test_the_budget_agrees_with_the_server_on_every_sample() -> None:
    assert (images.MAX_JPEG_SCANS, images.MAX_JPEG_SCAN_PIXELS) == (
        LIMITS.max_jpeg_scans, LIMITS.max_jpeg_scan_pixels)
    verdicts = {label: images.jpeg_too_complex(content) for label, content in SAMPLES.items()}
    assert verdicts == {label: server_refuses(content) for label, content in SAMPLES.items()}
    assert [label for label, refused in verdicts.items() if refused] == [
        "bomb 6000x6000 x 10000 scans", "101 scans at 64x64", "18 scans at 6000x6000"]


def test_every_step_reports_status_2_for_the_bomb_and_decodes_the_rest() -> None:
    items = np.array([[scan_bomb()], [photo("obama.jpg")]], dtype=np.object_)
    *_, yolox_statuses = yolox.preprocess_batch(items)
    *_, mobilenet_statuses = mobilenet.preprocess_batch(items)
    _, ocr_statuses = images.decode_all(items)
    face_items = [faces.decode_item(bytes(data), 0.6, False)
                  for data in items.reshape(-1)]
    assert yolox_statuses.reshape(-1).tolist() == [2, 0]
    assert mobilenet_statuses.reshape(-1).tolist() == [2, 0]
    assert ocr_statuses == [2, 0]
    assert [item.status for item in face_items] == [2, 0]


def test_a_png_whose_chunk_outruns_its_bytes_is_neither_decoded_nor_served() -> None:
    bomb, cut = png_length_bomb(), photo("chelsea.png")[:-20]
    items = np.array([[bomb], [cut], [photo("chelsea.png")]], dtype=np.object_)
    *_, yolox_statuses = yolox.preprocess_batch(items)
    *_, mobilenet_statuses = mobilenet.preprocess_batch(items)
    _, ocr_statuses = images.decode_all(items)
    face_items = [faces.decode_item(bytes(data), 0.6, False)
                  for data in items.reshape(-1)]
    assert yolox_statuses.reshape(-1).tolist() == [1, 1, 0]
    assert mobilenet_statuses.reshape(-1).tolist() == [1, 1, 0]
    assert ocr_statuses == [1, 1, 0]
    assert [item.status for item in face_items] == [1, 1, 0]
    for content in (bomb, cut):
        with pytest.raises(InvalidArgumentError) as refused:
            inspect_image(content, LIMITS)
        assert refused.value.reason == "IMAGE_TRUNCATED"
