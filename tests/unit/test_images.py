"""Header-only image inspection: formats, sizes, truncation and limits, on real photos."""

from __future__ import annotations

import struct

import pytest

from server.domain import ImageFormat, ImageLimits, Input, InvalidArgumentError
from server.images import count_jpeg_scans, inspect_image, jpeg_scans_allowed
from tests.images import encode, photo, scan_bomb

LIMITS = ImageLimits(max_bytes=32 << 20, max_pixels=40_000_000)


@pytest.mark.parametrize(
    ("name", "ext", "fmt"),
    [
        ("chelsea.png", None, ImageFormat.PNG),
        ("obama.jpg", None, ImageFormat.JPEG),
        ("chelsea.png", ".jpg", ImageFormat.JPEG),
        ("chelsea.png", ".webp", ImageFormat.WEBP),
        ("chelsea.png", ".bmp", ImageFormat.BMP),
    ],
)
def test_reads_format_and_size_from_header(name: str, ext: str | None, fmt: ImageFormat) -> None:
    content = photo(name) if ext is None else encode(name, ext)
    info = inspect_image(content, LIMITS)
    assert info.format is fmt
    expected = {"chelsea.png": (451, 300), "obama.jpg": (910, 1137)}[name]
    assert (info.width, info.height) == expected
    assert info.size_bytes == len(content)


def _reason_and_field(content: bytes, limits: ImageLimits = LIMITS) -> tuple[str, str, str]:
    with pytest.raises(InvalidArgumentError) as caught:
        inspect_image(content, limits)
    (violation,) = caught.value.violations
    assert violation.input is Input.IMAGE
    return caught.value.reason, violation.path, violation.description


@pytest.mark.parametrize("name", ["astronaut.png", "obama.jpg", "sample1.jpg"])
@pytest.mark.parametrize("keep", [0.5, 0.99])
def test_truncated_images_are_refused(name: str, keep: float) -> None:
    content = photo(name)
    reason, field, _ = _reason_and_field(content[: int(len(content) * keep)])
    assert (reason, field) == ("IMAGE_TRUNCATED", "")


def test_truncated_webp_and_bmp_are_refused() -> None:
    for ext in (".webp", ".bmp"):
        content = encode("chelsea.png", ext)
        assert _reason_and_field(content[:-100])[0] == "IMAGE_TRUNCATED"


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "EMPTY_IMAGE"),
        (b"hello, this is not an image at all", "INVALID_IMAGE"),
        (b"GIF89a" + b"\0" * 64, "UNSUPPORTED_IMAGE_FORMAT"),
        (b"II*\x00" + b"\0" * 64, "UNSUPPORTED_IMAGE_FORMAT"),
        (b"\0\0\0\x18ftypheic" + b"\0" * 64, "UNSUPPORTED_IMAGE_FORMAT"),
    ],
)
def test_non_images_are_refused(content: bytes, reason: str) -> None:
    assert _reason_and_field(content)[:2] == (reason, "")


def test_real_gif_is_unsupported() -> None:
    reason, _, description = _reason_and_field(encode("chelsea.png", ".gif"))
    assert reason == "UNSUPPORTED_IMAGE_FORMAT"
    assert "GIF" in description


def test_limits_on_bytes_and_pixels() -> None:
    content = photo("chelsea.png")
    assert _reason_and_field(content, ImageLimits(len(content) - 1, 10**9))[0] == "IMAGE_TOO_LARGE"
    reason, _, description = _reason_and_field(content, ImageLimits(10**9, 451 * 300 - 1))
    assert reason == "IMAGE_TOO_LARGE"
    assert "451x300" in description
    assert inspect_image(content, ImageLimits(len(content), 451 * 300)).width == 451


def test_os2_bmp_header_gives_its_real_size() -> None:
    pixels = bytes(8 * 3)  # 3 rows of 2 BGR pixels, each row padded to 8 bytes
    header = struct.pack("<2sIHHI", b"BM", 26 + len(pixels), 0, 0, 26)
    core = struct.pack("<IHHHH", 12, 2, 3, 1, 24)  # BITMAPCOREHEADER: 16-bit width, height
    info = inspect_image(header + core + pixels, LIMITS)
    assert (info.format, info.width, info.height) == (ImageFormat.BMP, 2, 3)


def test_a_progressive_jpeg_with_thousands_of_scans_is_refused_in_microseconds() -> None:
    bomb = scan_bomb()  # 6000x6000, 10 000 scans: ~15 s of decode CPU if it reached a decoder
    assert len(bomb) < 1_000_000
    reason, field, description = _reason_and_field(bomb)
    assert (reason, field) == ("IMAGE_TOO_COMPLEX", "")
    assert description == "the progressive JPEG has more than 17 scans for 6000x6000 pixels"


def test_scan_budget_is_on_scans_and_on_pixels_times_scans() -> None:
    small = scan_bomb(64, 64, 100)
    assert count_jpeg_scans(small, 10**6) == 100
    assert inspect_image(small, LIMITS).width == 64  # 100 scans of 4 096 pixels: fine
    assert _reason_and_field(scan_bomb(64, 64, 101))[0] == "IMAGE_TOO_COMPLEX"
    ordinary = encode("chelsea.png", ".jpg")  # sequential: never counted
    assert count_jpeg_scans(ordinary, 10**6) == 1
    assert jpeg_scans_allowed(40_000_000, LIMITS) == 16
    assert jpeg_scans_allowed(10, LIMITS) == 100
