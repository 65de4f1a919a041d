"""The upload state machine of every streaming RPC: every protocol mistake fails one image,
never more."""

from __future__ import annotations

from server.servicers.uploads import CompletedUpload, Event, FailedUpload, UploadAssembler
from vision.v1 import detection_pb2, upload_pb2
from vision.v1 import detection_service_pb2 as det_pb2


def header(request_id: str, size: int) -> det_pb2.StreamDetectObjectsRequest:
    return det_pb2.StreamDetectObjectsRequest(
        header=upload_pb2.UploadHeader(request_id=request_id, size_bytes=size))


def chunk(data: bytes) -> det_pb2.StreamDetectObjectsRequest:
    return det_pb2.StreamDetectObjectsRequest(chunk=upload_pb2.ImageChunk(data=data))


END = det_pb2.StreamDetectObjectsRequest(end=upload_pb2.UploadEnd())


def run(*messages: det_pb2.StreamDetectObjectsRequest, max_bytes: int = 1000) -> list[Event]:
    assembler = UploadAssembler(max_bytes, options_field="detection")
    events = [event for message in messages for event in assembler.feed(message)]
    return events + assembler.close()


def failure(event: Event) -> tuple[str, str, str]:
    assert isinstance(event, FailedUpload), event
    (violation,) = event.error.violations
    return event.request_id, event.error.reason, violation.path


def test_images_are_reassembled_in_order() -> None:
    events = run(header("a", 5), chunk(b"he"), chunk(b"llo"), END, header("b", 2), chunk(b"hi"),
                 END)
    assert [(e.request_id, e.content) for e in events if isinstance(e, CompletedUpload)] == [
        ("a", b"hello"), ("b", b"hi")]
    assert len(events) == 2


def test_chunks_beyond_declared_size_fail_that_image_once() -> None:
    events = run(header("a", 3), chunk(b"ab"), chunk(b"cd"), chunk(b"ef"), END,
                 header("b", 1), chunk(b"x"), END)
    assert failure(events[0]) == ("a", "UPLOAD_PROTOCOL", "chunk.data")
    assert isinstance(events[1], CompletedUpload) and events[1].request_id == "b"
    assert len(events) == 2


def test_end_before_declared_size_fails_the_image() -> None:
    (event,) = run(header("a", 10), chunk(b"abc"), END)
    assert failure(event) == ("a", "UPLOAD_PROTOCOL", "chunk.data")
    assert isinstance(event, FailedUpload)
    assert "received 3 bytes" in event.error.violations[0].description


def test_missing_end_marker_at_close_and_at_next_header() -> None:
    events = run(header("a", 1), chunk(b"x"), header("b", 1), chunk(b"y"))
    assert [failure(e)[::2] for e in events] == [("a", "end"), ("b", "end")]


def test_bad_headers() -> None:
    events = run(header("", 1), chunk(b"x"), END,
                 header("a", 0), END,
                 header("n", -1), END,
                 header("big", 1001), chunk(b"x"), END,
                 header("ok", 1), chunk(b"x"), END,
                 header("ok", 1), chunk(b"y"), END)
    assert [failure(e) for e in events if isinstance(e, FailedUpload)] == [
        ("", "UPLOAD_PROTOCOL", "header.request_id"),
        ("a", "EMPTY_IMAGE", "header.size_bytes"),
        ("n", "UPLOAD_PROTOCOL", "header.size_bytes"),
        ("big", "IMAGE_TOO_LARGE", "header.size_bytes"),
        ("ok", "UPLOAD_PROTOCOL", "header.request_id")]
    assert [e.request_id for e in events if isinstance(e, CompletedUpload)] == ["ok"]


def test_orphan_chunks_and_end_markers() -> None:
    events = run(chunk(b"x"), chunk(b"y"), END, END, header("a", 1), chunk(b"z"), END)
    assert [failure(e)[::2] for e in events[:2]] == [("", "header"), ("", "end")]
    assert isinstance(events[2], CompletedUpload)


def test_empty_message_is_a_failure() -> None:
    (event,) = run(det_pb2.StreamDetectObjectsRequest())
    assert failure(event)[2] == "kind"


def test_headers_take_only_this_rpcs_options_and_printable_ids() -> None:
    detection = det_pb2.StreamDetectObjectsRequest(header=upload_pb2.UploadHeader(
        request_id="det", size_bytes=1,
        detection=detection_pb2.DetectionOptions(max_detections=3)))
    events = run(detection, chunk(b"x"), END, header("has space", 1), chunk(b"x"), END,
                 header("x" * 129, 1), END)
    (done, spaced, long_id) = events
    assert isinstance(done, CompletedUpload)
    assert done.header.detection.max_detections == 3
    assert failure(spaced) == ("", "UPLOAD_PROTOCOL", "header.request_id")
    assert failure(long_id) == ("", "UPLOAD_PROTOCOL", "header.request_id")
    other = UploadAssembler(1000, options_field="embedding")
    (wrong,) = other.feed(detection)
    assert failure(wrong) == ("det", "UPLOAD_PROTOCOL", "header.detection")
