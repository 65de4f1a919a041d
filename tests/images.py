"""The shared test photos (../shared/testdata/images) and images derived from them."""

from __future__ import annotations

import struct
import zlib
from functools import cache
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT.parent / "shared" / "testdata" / "images"


@cache
def photo(name: str) -> bytes:
    return (PHOTOS / name).read_bytes()


def decode(name: str) -> np.ndarray:
    """The photo as a BGR array, decoded as Triton's preprocess step decodes it."""
    image = cv2.imdecode(np.frombuffer(photo(name), np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, name
    return image


def encode(name: str, ext: str) -> bytes:
    """The photo re-encoded in another format (".jpg", ".webp", ".bmp", ".gif" ...)."""
    ok, buffer = cv2.imencode(ext, decode(name))
    assert ok
    return bytes(buffer.tobytes())


@cache
def large_png(min_bytes: int = 6_000_000) -> bytes:
    """astronaut.png upscaled to 2400x2400 with sensor-like noise so that PNG cannot shrink it
    below min_bytes: an image that only fits through the chunked upload."""
    image = cv2.resize(decode("astronaut.png"), (2400, 2400), interpolation=cv2.INTER_LINEAR)
    noise = np.random.default_rng(7).integers(-6, 7, image.shape, dtype=np.int16)
    image = np.clip(image.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    ok, buffer = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    assert ok and buffer.size >= min_bytes, buffer.size
    return bytes(buffer.tobytes())


def _segments(jpeg: bytes) -> list[tuple[int, int, int]]:
    """(marker, start, end) of each marker segment, a scan's entropy-coded data included."""
    import re

    found, pos = [], 2
    while pos < len(jpeg):
        marker = jpeg[pos + 1]
        if marker == 0xD9:
            found.append((marker, pos, pos + 2))
            break
        (length,) = int.from_bytes(jpeg[pos + 2:pos + 4], "big"),
        end = pos + 2 + length
        if marker == 0xDA:
            next_marker = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]").search(jpeg, end)
            assert next_marker is not None
            end = next_marker.start()
        found.append((marker, pos, end))
        pos = end
    return found


@cache
def scan_bomb(width: int = 6000, height: int = 6000, scans: int = 10_000) -> bytes:
    """A blank progressive JPEG whose last scan (a luma AC refinement, a few bytes when every
    coefficient is zero) is repeated until the file has `scans` scans: each costs the decoder a
    pass over every block, so decoding it takes seconds although the file is small (issue 9)."""
    blank = np.full((height, width, 3), 128, np.uint8)
    ok, buffer = cv2.imencode(".jpg", blank, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    assert ok
    jpeg = bytes(buffer.tobytes())
    segments = _segments(jpeg)
    sos = [(start, end) for marker, start, end in segments if marker == 0xDA]
    last_start, last_end = sos[-1]
    repeated = jpeg[last_start:last_end] * (scans - len(sos))
    return jpeg[:last_end] + repeated + jpeg[last_end:]


def png_length_bomb() -> bytes:
    """A ~120-byte PNG (valid signature and IHDR, then an IDAT chunk claiming 0xF0000000 bytes,
    then IEND) that OpenCV 4.11 spent 10 s and 4 GB decoding: it trusts the declared length."""
    header = b"IHDR" + struct.pack(">IIBBBBB", 64, 64, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + header
            + struct.pack(">I", zlib.crc32(header)) + struct.pack(">I", 0xF0000000) + b"IDAT"
            + bytes(64) + b"\x00\x00\x00\x00IEND\xaeB`\x82")


def corrupt_png(name: str = "chelsea.png") -> bytes:
    """The photo's PNG with every IDAT chunk's data zeroed: chunk structure, sizes and header
    intact (it passes every header check), the compressed pixels undecodable."""
    data = bytearray(photo(name))
    pos = 8
    while pos + 12 <= len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        if data[pos + 4:pos + 8] == b"IDAT":
            data[pos + 8:pos + 8 + length] = bytes(length)
        pos += 12 + length
    return bytes(data)
