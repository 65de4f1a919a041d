"""Reassembles images from any upload stream (upload.proto: header → chunks → end, repeated) and
reports each protocol mistake as a failure of that one image, so the stream goes on.

Every streaming RPC's request has the same `kind` oneof (header, chunk, end); the assembler is
told which of the header's `options` it takes, so one state machine serves every service.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from server import request_ids
from server.domain import Input, InvalidArgumentError
from vision.v1 import upload_pb2

_REASON = "UPLOAD_PROTOCOL"


class UploadMessage(Protocol):
    """One message of an upload stream (e.g. vision.v1.StreamDetectObjectsRequest)."""

    @property
    def header(self) -> upload_pb2.UploadHeader: ...
    @property
    def chunk(self) -> upload_pb2.ImageChunk: ...
    def WhichOneof(self, oneof_group: Literal["kind"]) -> str | None: ...  # noqa: N802


@dataclass(frozen=True, slots=True)
class CompletedUpload:
    request_id: str
    header: upload_pb2.UploadHeader
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

    header: upload_pb2.UploadHeader
    chunks: list[bytes]
    received: int = 0


class UploadAssembler:
    """Feed it every message of the stream, then call `close()`; each returns finished images.

    After a failure the rest of that image (its chunks, up to its end marker) is skipped
    quietly: one mistake yields one failed result, not one per chunk.
    """

    def __init__(self, max_bytes: int, options_field: str) -> None:
        self._max_bytes = max_bytes
        self._options_field = options_field
        self._open: _Open | None = None
        self._skipping = False
        self._seen: set[str] = set()

    @property
    def has_open(self) -> bool:
        """An image is being uploaded (its header accepted, its end marker not yet seen)."""
        return self._open is not None

    def feed(self, message: UploadMessage) -> list[Event]:
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

    def _header(self, header: upload_pb2.UploadHeader) -> list[Event]:
        events: list[Event] = []
        if self._open is not None:
            events.append(FailedUpload(self._open.header.request_id, _error(
                "end", "a new header arrived before this image's end marker")))
            self._open = None
        self._skipping = False
        problem = self._check_header(header)
        if problem is not None:
            shown = header.request_id if request_ids.is_valid(header.request_id) else ""
            events.append(FailedUpload(shown, problem))
            self._skipping = True
            return events
        self._seen.add(header.request_id)
        self._open = _Open(header, [])
        return events

    def _check_header(self, header: upload_pb2.UploadHeader) -> InvalidArgumentError | None:
        rid = header.request_id
        if not request_ids.is_valid(rid):
            return _error("header.request_id", f"required: 1 to {request_ids.MAX_LENGTH} "
                          "printable ASCII characters without spaces")
        if rid in self._seen:
            return _error("header.request_id", "already used on this stream")
        if header.size_bytes < 0:
            return _error("header.size_bytes", "required, > 0")
        if header.size_bytes == 0:
            # A declared size of 0 is an empty image, answered as a unary call's empty content is.
            return InvalidArgumentError.one(
                "EMPTY_IMAGE", Input.REQUEST, "header.size_bytes", "the image is empty")
        if header.size_bytes > self._max_bytes:
            return InvalidArgumentError.one(
                "IMAGE_TOO_LARGE", Input.REQUEST, "header.size_bytes",
                f"{header.size_bytes} bytes declared; the limit is {self._max_bytes}")
        given = header.WhichOneof("options")
        if given is not None and given != self._options_field:
            return _error(f"header.{given}",
                          f"this RPC takes header.{self._options_field}, not header.{given}")
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
        return [CompletedUpload(header.request_id, header, b"".join(upload.chunks))]


def _error(field: str, description: str) -> InvalidArgumentError:
    return InvalidArgumentError.one(_REASON, Input.REQUEST, field, description)
