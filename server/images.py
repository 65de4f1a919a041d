"""Reads an encoded image's format and size from its header and enforces the limits.

Nothing here decodes pixels: a 6 MB upload is checked in microseconds, and a decompression bomb
is refused by its declared size before anything allocates for it. Decoding happens in Triton.
"""

from __future__ import annotations

import re
import struct

from server.domain import ImageFormat, ImageInfo, ImageLimits, Input, InvalidArgumentError

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Formats we recognise but do not serve: a clearer error than "not an image".
_UNSUPPORTED = {
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
    b"\x00\x00\x01\x00": "ICO",
    b"%PDF": "PDF",
}
# JPEG start-of-frame markers that carry the frame size (not DHT C4, JPG C8, DAC CC).
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
# Progressive frames: their decoder runs once per scan over the whole image, so a 100 KB file of
# thousands of empty scans costs seconds of CPU (issue 9). Sequential frames code each component
# once. The same count runs in the decode steps of model_repository/ (count_jpeg_scans).
_JPEG_PROGRESSIVE = {0xC2, 0xC6, 0xCA, 0xCE}
# The next marker after entropy-coded data: FF followed by neither a stuffed 00, a restart
# marker (D0-D7) nor a fill byte.
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def inspect_image(content: bytes, limits: ImageLimits) -> ImageInfo:
    """Returns the image's format and size, or raises InvalidArgumentError about the image:
    EMPTY_IMAGE, INVALID_IMAGE, IMAGE_TRUNCATED, UNSUPPORTED_IMAGE_FORMAT, IMAGE_TOO_LARGE,
    or IMAGE_TOO_COMPLEX for a progressive JPEG with more scans than its decode budget."""
    if not content:
        raise _invalid("EMPTY_IMAGE", "the image is empty")
    if len(content) > limits.max_bytes:
        raise _invalid(
            "IMAGE_TOO_LARGE",
            f"the image has {len(content)} bytes; the limit is {limits.max_bytes}",
        )
    info = _read_header(content)
    if info.width <= 0 or info.height <= 0:
        raise _invalid("INVALID_IMAGE", f"the {info.format.value} header gives no valid size")
    if info.width * info.height > limits.max_pixels:
        raise _invalid(
            "IMAGE_TOO_LARGE",
            f"the image is {info.width}x{info.height} pixels; the limit is {limits.max_pixels}",
        )
    if info.format is ImageFormat.JPEG and _jpeg_progressive(content):
        allowed = jpeg_scans_allowed(info.width * info.height, limits)
        if count_jpeg_scans(content, allowed + 1) > allowed:
            raise _invalid(
                "IMAGE_TOO_COMPLEX",
                f"the progressive JPEG has more than {allowed} scans for "
                f"{info.width}x{info.height} pixels",
            )
    return info


def jpeg_scans_allowed(pixels: int, limits: ImageLimits) -> int:
    """Scans a progressive JPEG of `pixels` may have: each costs a pass over every block (25 ms
    per scan at 36 MP here), so the budget is on pixels x scans as well as on scans."""
    return max(1, min(limits.max_jpeg_scans, limits.max_jpeg_scan_pixels // max(1, pixels)))


def _jpeg_progressive(content: bytes) -> bool:
    pos, n = 2, len(content)
    while pos + 4 <= n and content[pos] == 0xFF:
        marker = content[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker in _JPEG_SOF:
            return marker in _JPEG_PROGRESSIVE
        if marker == 0xDA:
            return False
        (length,) = struct.unpack_from(">H", content, pos + 2)
        pos += 2 + length
    return False


def count_jpeg_scans(content: bytes, stop_at: int) -> int:
    """How many scans (SOS segments) the JPEG has, counting no further than stop_at. Walks the
    marker segments, and jumps over each scan's entropy-coded data with one C-level search."""
    pos, n, scans = 2, len(content), 0
    while pos + 4 <= n and scans < stop_at:
        if content[pos] != 0xFF:
            break
        marker = content[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker == 0xD9:  # end of image
            break
        if marker in (0x01, *range(0xD0, 0xD8)):
            pos += 2
            continue
        (length,) = struct.unpack_from(">H", content, pos + 2)
        pos += 2 + length
        if marker == 0xDA:
            scans += 1
            found = _JPEG_MARKER.search(content, pos)
            if found is None:
                break
            pos = found.start()
    return scans


def _invalid(reason: str, description: str) -> InvalidArgumentError:
    return InvalidArgumentError.one(reason, Input.IMAGE, "", description)


def _read_header(content: bytes) -> ImageInfo:
    if content.startswith(b"\xff\xd8\xff"):
        return _jpeg(content)
    if content.startswith(_PNG_MAGIC):
        return _png(content)
    if content[:4] == b"RIFF" and content[8:12] == b"WEBP":
        return _webp(content)
    if content.startswith(b"BM"):
        return _bmp(content)
    for magic, name in _UNSUPPORTED.items():
        if content.startswith(magic):
            raise _invalid(
                "UNSUPPORTED_IMAGE_FORMAT", f"{name} is not supported; send JPEG, PNG, WebP or BMP"
            )
    if content[4:8] == b"ftyp":
        raise _invalid(
            "UNSUPPORTED_IMAGE_FORMAT", "HEIF/AVIF is not supported; send JPEG, PNG, WebP or BMP"
        )
    raise _invalid(
        "INVALID_IMAGE", "the bytes are not an image (no JPEG, PNG, WebP or BMP signature)"
    )


def _truncated(fmt: ImageFormat) -> InvalidArgumentError:
    return _invalid("IMAGE_TRUNCATED", f"the {fmt.value} data is truncated (upload incomplete?)")


_LENGTHLESS = frozenset((0x01, *range(0xD0, 0xD8)))  # TEM and RSTn: no length field


def _jpeg(content: bytes) -> ImageInfo:
    pos, size, n = 2, None, len(content)
    while pos + 4 <= n:
        if content[pos] != 0xFF:
            raise _truncated(ImageFormat.JPEG)
        marker = content[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _LENGTHLESS:  # markers without a length
            pos += 2
            continue
        (length,) = struct.unpack_from(">H", content, pos + 2)
        if marker in _JPEG_SOF and pos + 9 <= n:
            height, width = struct.unpack_from(">HH", content, pos + 5)
            size = (width, height)
        if marker == 0xDA:  # start of scan: entropy-coded data follows up to EOI
            if size is None:
                break
            # FF D9 cannot occur inside entropy-coded data (FF is stuffed), so its absence after
            # the scan starts means the file was cut short. Searching after SOS skips the EOI of
            # an EXIF thumbnail, which sits in APP1 before it. rfind starts at the end, where a
            # whole file's EOI is: a forward scan cost 15% of the server's CPU per image (bench).
            if content.rfind(b"\xff\xd9", pos + 2 + length) == -1:
                raise _truncated(ImageFormat.JPEG)
            return ImageInfo(ImageFormat.JPEG, size[0], size[1], n)
        pos += 2 + length
    raise _truncated(ImageFormat.JPEG)


def _png(content: bytes) -> ImageInfo:
    if len(content) < 33 or content[12:16] != b"IHDR":
        raise _truncated(ImageFormat.PNG)
    width, height = struct.unpack_from(">II", content, 16)
    # Every chunk must fit the bytes up to IEND: OpenCV trusts a chunk's declared length, and a
    # ~120-byte file claiming a 4 GB chunk cost its decoder 10 s and 4 GB.
    pos, n = len(_PNG_MAGIC), len(content)
    while True:
        if pos + 12 > n:
            raise _truncated(ImageFormat.PNG)
        (length,) = struct.unpack_from(">I", content, pos)
        end = pos + 12 + length  # length, type, data, CRC
        if end > n:
            raise _truncated(ImageFormat.PNG)
        if content[pos + 4:pos + 8] == b"IEND":
            return ImageInfo(ImageFormat.PNG, width, height, n)
        pos = end


def _webp(content: bytes) -> ImageInfo:
    (riff_size,) = struct.unpack_from("<I", content, 4)
    if len(content) < 30 or riff_size + 8 > len(content):
        raise _truncated(ImageFormat.WEBP)
    chunk = content[12:16]
    if chunk == b"VP8 ":
        w, h = struct.unpack_from("<HH", content, 26)
        width, height = w & 0x3FFF, h & 0x3FFF
    elif chunk == b"VP8L":
        (bits,) = struct.unpack_from("<I", content, 21)
        width, height = (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    elif chunk == b"VP8X":
        width = int.from_bytes(content[24:27], "little") + 1
        height = int.from_bytes(content[27:30], "little") + 1
    else:
        raise _invalid("INVALID_IMAGE", "unknown WebP chunk")
    return ImageInfo(ImageFormat.WEBP, width, height, len(content))


def _bmp(content: bytes) -> ImageInfo:
    if len(content) < 26:
        raise _truncated(ImageFormat.BMP)
    (file_size,) = struct.unpack_from("<I", content, 2)
    if file_size > len(content):
        raise _truncated(ImageFormat.BMP)
    (header_size,) = struct.unpack_from("<I", content, 14)
    if header_size == 12:  # OS/2 BITMAPCOREHEADER: 16-bit unsigned width and height
        width, height = struct.unpack_from("<HH", content, 18)
    else:
        width, height = struct.unpack_from("<ii", content, 18)
    return ImageInfo(ImageFormat.BMP, width, abs(height), len(content))
