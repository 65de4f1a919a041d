"""The images the benchmarks send: the shared test photos, a ~50 KB JPEG and a ~6 MB PNG, built
the same way in every process so that workers never receive image bytes over a pipe."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# VISION_BENCH_PHOTOS: the photos' folder where ../shared is not beside the repository (a GPU box).
PHOTOS = Path(os.environ.get("VISION_BENCH_PHOTOS", ROOT.parent / "shared" / "testdata" / "images"))

PayloadName = Literal["photos", "small", "large"]

SMALL_SOURCE = "astronaut.png"
SMALL_JPEG_QUALITY = 80
LARGE_SIDE = 2400


@cache
def photos() -> tuple[bytes, ...]:
    """Every test photo as stored (JPEG and PNG, 13 KB to 800 KB), in name order."""
    files = sorted(path for path in PHOTOS.iterdir() if path.is_file())
    if not files:
        raise FileNotFoundError(f"no photos in {PHOTOS}")
    return tuple(path.read_bytes() for path in files)


def _decode(name: str) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer((PHOTOS / name).read_bytes(), np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"cannot decode {name}")
    return image


def _encode(image: np.ndarray, ext: str, params: list[int]) -> bytes:
    ok, buffer = cv2.imencode(ext, image, params)
    if not ok:
        raise ValueError(f"cannot encode {ext}")
    return bytes(buffer.tobytes())


@cache
def small_jpeg() -> bytes:
    """astronaut.png (512x512) re-encoded as JPEG quality 80: about 50 KB."""
    return _encode(_decode(SMALL_SOURCE), ".jpg", [cv2.IMWRITE_JPEG_QUALITY, SMALL_JPEG_QUALITY])


@cache
def large_png() -> bytes:
    """astronaut.png upscaled to 2400x2400 with fixed-seed noise, PNG compression 1: about 6 MB,
    too big for a unary call (the recipe of tests/images.py `large_png`)."""
    image = cv2.resize(_decode(SMALL_SOURCE), (LARGE_SIDE, LARGE_SIDE),
                       interpolation=cv2.INTER_LINEAR)
    noise = np.random.default_rng(7).integers(-6, 7, image.shape, dtype=np.int16)
    image = np.clip(image.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    return _encode(image, ".png", [cv2.IMWRITE_PNG_COMPRESSION, 1])


def payload(name: PayloadName) -> tuple[bytes, ...]:
    """The images of a set, cycled through by every benchmark call."""
    if name == "photos":
        return photos()
    if name == "small":
        return (small_jpeg(),)
    return (large_png(),)
