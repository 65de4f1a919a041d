"""Property-based fuzzing (hypothesis) of the image header checks and the upload state machine.

Bounded for CI (a few hundred examples each, well under 2 minutes together); a longer run:
`VISION_FUZZ_EXAMPLES=20000 .venv/bin/python -m pytest -q tests/unit/test_fuzz.py`.
Whatever it finds becomes a case of tests/integration/bad_inputs.py.
"""

from __future__ import annotations

import os
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.domain import ImageLimits, InvalidArgumentError
from server.images import count_jpeg_scans, inspect_image
from server.servicers.uploads import CompletedUpload, FailedUpload, UploadAssembler
from tests.images import encode, photo
from vision.v1 import detection_pb2, upload_pb2
from vision.v1 import detection_service_pb2 as det_pb2

EXAMPLES = int(os.environ.get("VISION_FUZZ_EXAMPLES", "300"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
LIMITS = ImageLimits(max_bytes=1 << 20, max_pixels=40_000_000)
REASONS = {"EMPTY_IMAGE", "INVALID_IMAGE", "IMAGE_TRUNCATED", "UNSUPPORTED_IMAGE_FORMAT",
           "IMAGE_TOO_LARGE", "IMAGE_TOO_COMPLEX"}
SEEDS = [photo("chelsea.png")[:4096], encode("chelsea.png", ".jpg")[:4096],
         encode("chelsea.png", ".webp")[:512], encode("chelsea.png", ".bmp")[:512]]


def _check(content: bytes) -> None:
    """inspect_image either accepts with a sane size or refuses with a documented reason;
    never another exception (an IndexError or struct.error would be a 500 to the caller)."""
    try:
        info = inspect_image(content, LIMITS)
    except InvalidArgumentError as err:
        assert err.reason in REASONS, err.reason
        return
    assert 0 < info.width and 0 < info.height
    assert info.width * info.height <= LIMITS.max_pixels
    assert info.size_bytes == len(content)


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes_never_break_the_header_check(content: bytes) -> None:
    _check(content)


@FUZZ
@given(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 4095), st.integers(0, 255)),
                                        max_size=16), st.integers(8, 4096))
def test_mutated_real_headers_never_break_the_header_check(
    seed: bytes, flips: list[tuple[int, int]], cut: int
) -> None:
    content = bytearray(seed[:cut])
    for position, value in flips:
        if position < len(content):
            content[position] = value
    _check(bytes(content))


@FUZZ
@given(st.lists(st.tuples(st.integers(0xC0, 0xFE), st.binary(max_size=64)), max_size=40))
def test_any_marker_sequence_counts_scans_without_error(segments: list[tuple[int, bytes]]) -> None:
    content = b"\xff\xd8" + b"".join(
        bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body
        for marker, body in segments) + b"\xff\xd9"
    assert 0 <= count_jpeg_scans(content, 1000) <= len(segments)
    _check(content)


MESSAGES = st.one_of(
    st.builds(lambda rid, size, score: det_pb2.StreamDetectObjectsRequest(
        header=upload_pb2.UploadHeader(
            request_id=rid, size_bytes=size,
            detection=detection_pb2.DetectionOptions(score_threshold=score))),
        st.sampled_from(["a", "b", "", "c d", "x" * 200]), st.integers(-5, 40),
        st.floats(0, 1)),
    st.builds(lambda data: det_pb2.StreamDetectObjectsRequest(
        chunk=upload_pb2.ImageChunk(data=data)), st.binary(max_size=16)),
    st.just(det_pb2.StreamDetectObjectsRequest(end=upload_pb2.UploadEnd())),
    st.just(det_pb2.StreamDetectObjectsRequest()),
)


@FUZZ
@given(st.lists(MESSAGES, max_size=60))
def test_the_upload_state_machine_holds_its_invariants(
    messages: list[det_pb2.StreamDetectObjectsRequest],
) -> None:
    assembler = UploadAssembler(32, options_field="detection")
    events = []
    for message in messages:
        events.extend(assembler.feed(message))
    events.extend(assembler.close())
    assert not assembler.has_open
    completed = [e for e in events if isinstance(e, CompletedUpload)]
    # Every image that completes is exactly as large as its header declared and within limits,
    # and has a request id used once on the stream.
    for upload in completed:
        assert len(upload.content) == upload.header.size_bytes <= 32
    ids = [upload.request_id for upload in completed]
    assert len(ids) == len(set(ids))
    # At most one event per message (plus one at close): mistakes never multiply.
    assert len(events) <= len(messages) + 1
    for event in events:
        if isinstance(event, FailedUpload):
            assert event.error.reason in {"UPLOAD_PROTOCOL", "IMAGE_TOO_LARGE", "EMPTY_IMAGE"}
