"""Reassembles images from a StreamDetect upload (header → chunks → end, repeated) and reports
each protocol mistake as a failure of that one image, so the stream goes on."""

from __future__ import annotations

from dataclasses import dataclass

from server.domain import InvalidArgumentError
from vision.v1 import detection_service_pb2 as det_pb2

MAX_REQUEST_ID = 128
_REASON = "UPLOAD_PROTOCOL"


@dataclass(frozen=True, slots=True)
class CompletedUpload:
    request_id: str
    options: det_pb2.DetectionOptions
    content: bytes


@dataclass(frozen=True, slots=True)
class FailedUpload:
    request_id: str
    error: InvalidArgumentError


Event = CompletedUpload | FailedUpload


@dataclass(slots=True)
class _Open:
    """An image being uploaded. Chunks are kept as received and joined once at the end: one
    copy of the image instead of an append per chunk plus a final copy (see bench/REPORT.md)."""

    header: det_pb2.UploadHeader
    chunks: list[bytes]
    received: int = 0


class UploadAssembler:
    """Feed it every message of the stream, then call `close()`; each returns finished images.

    After a failure the rest of that image (its chunks, up to its end marker) is skipped
    quietly: one mistake yields one failed result, not one per chunk.
    """

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._open: _Open | None = None
        self._skipping = False
        self._seen: set[str] = set()

    def feed(self, message: det_pb2.StreamDetectRequest) -> list[Event]:
        kind = message.WhichOneof("kind")
        if kind == "header":
            return self._header(message.header)
        if kind == "chunk":
            return self._chunk(message.chunk.data)
        if kind == "end":
            return self._end()
        return [FailedUpload("", _error("kind", "the message carries no header, chunk or end"))]

    def close(self) -> list[Event]:
        """The client closed its side: an image still open never got its end marker."""
        if self._open is None:
            return []
        request_id = self._open.header.request_id
        self._open = None
        return [FailedUpload(request_id, _error(
            "end", "the stream closed before this image's end marker"))]

    def _header(self, header: det_pb2.UploadHeader) -> list[Event]:
        events: list[Event] = []
        if self._open is not None:
            events.append(FailedUpload(self._open.header.request_id, _error(
                "end", "a new header arrived before this image's end marker")))
            self._open = None
        self._skipping = False
        problem = self._check_header(header)
        if problem is not None:
            events.append(FailedUpload(header.request_id, problem))
            self._skipping = True
            return events
        self._seen.add(header.request_id)
        self._open = _Open(header, [])
        return events

    def _check_header(self, header: det_pb2.UploadHeader) -> InvalidArgumentError | None:
        rid = header.request_id
        if not rid:
            return _error("header.request_id", "required")
        if len(rid) > MAX_REQUEST_ID:
            return _error("header.request_id", f"at most {MAX_REQUEST_ID} characters")
        if rid in self._seen:
            return _error("header.request_id", "already used on this stream")
        if header.size_bytes <= 0:
            return _error("header.size_bytes", "required, > 0")
        if header.size_bytes > self._max_bytes:
            return InvalidArgumentError.one(
                "IMAGE_TOO_LARGE", "header.size_bytes",
                f"{header.size_bytes} bytes declared; the limit is {self._max_bytes}")
        return None

    def _chunk(self, data: bytes) -> list[Event]:
        if self._open is None:
            if self._skipping:
                return []
            self._skipping = True
            return [FailedUpload("", _error("header", "a chunk arrived with no open image"))]
        declared = self._open.header.size_bytes
        if self._open.received + len(data) > declared:
            request_id = self._open.header.request_id
            self._open = None
            self._skipping = True
            return [FailedUpload(request_id, _error(
                "chunk.data", f"the chunks exceed the {declared} bytes the header declared"))]
        self._open.chunks.append(data)
        self._open.received += len(data)
        return []

    def _end(self) -> list[Event]:
        if self._open is None:
            if self._skipping:
                self._skipping = False
                return []
            return [FailedUpload("", _error("end", "an end marker arrived with no open image"))]
        upload, self._open = self._open, None
        header = upload.header
        if upload.received != header.size_bytes:
            return [FailedUpload(header.request_id, _error(
                "chunk.data",
                f"received {upload.received} bytes; the header declared {header.size_bytes}"))]
        return [CompletedUpload(header.request_id, header.options, b"".join(upload.chunks))]


def _error(field: str, description: str) -> InvalidArgumentError:
    return InvalidArgumentError.one(_REASON, field, description)
