"""The resize policies of triton_models.resize against the networks' own references: Pillow's
BILINEAR resize (what torchvision's Resize does to a PIL image) for MobileNetV2, and YOLOX's
`preproc` written out from its repository for the letterbox."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from tests.images import decode
from triton_models.resize import letterbox, shorter_side_centre_crop


def pil_resize_crop(rgb: np.ndarray, shorter: int = 256, crop: int = 224) -> np.ndarray:
    """torchvision's Resize(shorter) + CenterCrop(crop) on a PIL image, by hand."""
    image = Image.fromarray(rgb)
    width, height = image.size
    if width <= height:
        size = (shorter, int(shorter * height / width))
    else:
        size = (int(shorter * width / height), shorter)
    resized = image.resize(size, Image.Resampling.BILINEAR)
    left, top = int(round((size[0] - crop) / 2.0)), int(round((size[1] - crop) / 2.0))
    return np.asarray(resized.crop((left, top, left + crop, top + crop)))


@pytest.mark.parametrize("name", ["sample1.jpg", "sample4.jpg", "chelsea.png", "page.png"])
def test_mobilenet_resize_is_pillows_antialiased_bilinear(name: str) -> None:
    rgb = np.ascontiguousarray(decode(name)[:, :, ::-1])
    got = shorter_side_centre_crop(rgb, 256, 224).astype(int)
    want = pil_resize_crop(rgb).astype(int)
    assert got.shape == want.shape == (224, 224, 3)
    # Pillow rounds in fixed point and resizes rows first; no pixel is more than one level off.
    assert np.abs(got - want).max() <= 1 and np.abs(got - want).mean() < 0.3


@pytest.mark.parametrize("shape", [(10, 20), (300, 451), (451, 300), (100, 3000), (3001, 257)])
def test_mobilenet_resize_matches_pillow_on_noise_of_any_shape(shape: tuple[int, int]) -> None:
    rgb = np.random.default_rng(7).integers(0, 256, (*shape, 3), dtype=np.uint8)
    got = shorter_side_centre_crop(rgb, 256, 224).astype(int)
    assert np.abs(got - pil_resize_crop(rgb).astype(int)).max() <= 1


def test_an_antialiased_shrink_averages_what_sampling_would_alias() -> None:
    # One-pixel black/white stripes shrunk 8x: sampling would pick one colour, the filter
    # averages both to mid-grey, as Pillow does.
    stripes = np.zeros((2048, 2048, 3), dtype=np.uint8)
    stripes[:, 1::2] = 255
    crop = shorter_side_centre_crop(stripes, 256, 224)
    assert np.all(np.abs(crop.astype(int) - 128) <= 1)


def test_letterbox_is_yolox_preproc() -> None:
    image = decode("motorcycle_left.png")
    tensor, scale = letterbox(image, 416)
    # YOLOX's preproc: r = min(416 / h, 416 / w); cv2.resize to (int(w r), int(h r)) bilinear;
    # top-left of a 114 canvas; HWC -> CHW float32, BGR and 0-255 kept.
    r = min(416 / image.shape[0], 416 / image.shape[1])
    size = (int(image.shape[1] * r), int(image.shape[0] * r))
    padded = np.full((416, 416, 3), 114, dtype=np.uint8)
    padded[: size[1], : size[0]] = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
    assert scale == r
    np.testing.assert_array_equal(tensor, padded.transpose(2, 0, 1).astype(np.float32))
