"""Decoding of the encoded images every entry model receives, to an image and its
IMAGE_STATUS (0 decoded, 1 not decodable, 2 over the decode budget), with the budget checked in
this one place before OpenCV sees the bytes.

The budget is the server's header check (server/images.py, settings limits.max_jpeg_scans /
max_jpeg_scan_pixels) again, because Triton may be called directly: the decoder passes over
every block once per scan, so a 100 KB file of thousands of empty scans would hold a step for
seconds. tests/unit/test_decode_budget.py keeps it in agreement with the server.

PNG: OpenCV trusts a chunk's declared length, so a ~120-byte file whose chunk claims 4 GB held a
step for 10 s and 4 GB of memory; a PNG whose chunks do not fit its bytes is not decoded.
"""

from __future__ import annotations

import re

import cv2
import numpy as np
import numpy.typing as npt

UInt8Image = npt.NDArray[np.uint8]

STATUS_OK = 0
STATUS_UNDECODABLE = 1
STATUS_TOO_COMPLEX = 2

MAX_JPEG_SCANS = 100
MAX_JPEG_SCAN_PIXELS = 640_000_000
_JPEG_PROGRESSIVE = (0xC2, 0xC6, 0xCA, 0xCE)
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_chunks_broken(data: bytes) -> bool:
    """True for a PNG whose chunks do not fit its bytes (a length running past the end, or no
    IEND chunk after them); False for any other data."""
    if not data.startswith(_PNG_MAGIC):
        return False
    pos, n = len(_PNG_MAGIC), len(data)
    while pos + 12 <= n:
        length = int.from_bytes(data[pos : pos + 4], "big")
        end = pos + 12 + length  # length, type, data, CRC
        if end > n:
            return True
        if data[pos + 4 : pos + 8] == b"IEND":
            return False
        pos = end
    return True


def jpeg_too_complex(data: bytes) -> bool:
    """True for a progressive JPEG with more scans than its budget; counted without decoding."""
    if not data.startswith(b"\xff\xd8"):
        return False
    pos, n, scans, allowed = 2, len(data), 0, 0
    while pos + 4 <= n and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker == 0xD9:
            break
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker in _JPEG_PROGRESSIVE and pos + 9 <= n:
            height = int.from_bytes(data[pos + 5 : pos + 7], "big")
            width = int.from_bytes(data[pos + 7 : pos + 9], "big")
            allowed = max(1, min(MAX_JPEG_SCANS, MAX_JPEG_SCAN_PIXELS // max(1, width * height)))
        pos += 2 + length
        if marker == 0xDA:
            if not allowed:  # a sequential frame: one pass per component
                return False
            scans += 1
            if scans > allowed:
                return True
            found = _JPEG_MARKER.search(data, pos)
            if found is None:
                break
            pos = found.start()
    return False


def decode(data: bytes) -> tuple[UInt8Image | None, int]:
    """JPEG/PNG/WebP/BMP bytes as HxWx3 BGR uint8 (EXIF orientation applied, alpha dropped,
    grey expanded) and STATUS_OK, or None and the status that says why not."""
    if jpeg_too_complex(data):
        return None, STATUS_TOO_COMPLEX
    if not data or png_chunks_broken(data):
        return None, STATUS_UNDECODABLE
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:
        return None, STATUS_UNDECODABLE
    if image is None or image.ndim != 3 or image.shape[2] != 3 or image.size == 0:
        return None, STATUS_UNDECODABLE
    return np.asarray(image, dtype=np.uint8), STATUS_OK


def decode_all(items: npt.NDArray[np.object_]) -> tuple[list[UInt8Image | None], list[int]]:
    """Every image of one request's IMAGE tensor ([n, 1] bytes) and its status."""
    decoded = [decode(bytes(item)) for item in items.reshape(-1)]
    return [image for image, _ in decoded], [status for _, status in decoded]
