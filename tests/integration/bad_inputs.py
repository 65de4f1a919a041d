"""The bad-input corpus: ONE table of hostile or mistaken requests across every RPC, each with
the exact code, ErrorInfo reason and BadRequest fields the caller must get. Walked by
tests/integration/test_bad_input_corpus.py; grows with every RPC and with whatever fuzzing finds.

A case sends raw request bytes (so malformed messages fit the same table) with optional
metadata. For a stream, `expected` is the first failed item's status, or the call's own status
when the stream as a whole is ended (`whole_call`)."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf.message import Message

from tests.images import corrupt_png, encode, photo, png_length_bomb, scan_bomb
from vision.v1 import (
    analysis_pb2,
    detection_pb2,
    embedding_pb2,
    face_pb2,
    image_pb2,
    model_pb2,
    ocr_pb2,
    person_pb2,
    upload_pb2,
)
from vision.v1 import analysis_service_pb2 as an_pb2
from vision.v1 import detection_service_pb2 as det_pb2
from vision.v1 import embedding_service_pb2 as emb_pb2
from vision.v1 import face_service_pb2 as face_pb2s
from vision.v1 import model_service_pb2 as mod_pb2
from vision.v1 import ocr_service_pb2 as ocr_pb2s
from vision.v1 import people_service_pb2 as people_pb2
from vision.v1 import search_service_pb2 as search_pb2

IA = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND

JPEG = photo("obama.jpg")
PNG = photo("chelsea.png")
CORRUPT_PNG = corrupt_png()  # passes every header check; its pixels do not decode
# A PNG whose header claims 10 000 x 10 000 pixels (100 MP, over the 40 MP limit).
HUGE_PNG = PNG[:16] + struct.pack(">II", 10_000, 10_000) + PNG[24:]


def os2_bmp(width: int, height: int) -> bytes:
    """An OS/2 bitmap (12-byte BITMAPCOREHEADER: 16-bit width and height), 24-bit pixels."""
    pixels = bytes(((width * 3 + 3) // 4 * 4) * height)
    return (b"BM" + struct.pack("<IHHI", 26 + len(pixels), 0, 0, 26)
            + struct.pack("<IHHHH", 12, width, height, 1, 24) + pixels)



@dataclass(frozen=True)
class Expected:
    code: grpc.StatusCode
    reason: str
    fields: tuple[str, ...] = ()


@dataclass(frozen=True)
class Case:
    name: str
    method: str  # "/vision.v1.Service/Method"
    messages: tuple[bytes, ...]  # one for a unary request
    expected: Expected
    streaming: bool = False
    whole_call: bool = False  # a stream ended as a whole, not one failed item
    metadata: tuple[tuple[str, str], ...] = field(default=())


def _raw(message: Message) -> bytes:
    return message.SerializeToString()


def _invalid_utf8(message: Message, marker: str) -> bytes:
    data = _raw(message)
    assert data.count(marker.encode()) == 1
    return data.replace(marker.encode(), b"\xff\xfe" + marker.encode()[2:])


def _image(content: bytes) -> image_pb2.Image:
    return image_pb2.Image(content=content)


def detect(content: bytes = PNG, **options: Any) -> det_pb2.DetectObjectsRequest:
    return det_pb2.DetectObjectsRequest(image=_image(content),
                                        options=detection_pb2.DetectionOptions(**options))


DETECT = "/vision.v1.DetectionService/DetectObjects"
STREAM_DETECT = "/vision.v1.DetectionService/StreamDetectObjects"
EMBED = "/vision.v1.EmbeddingService/EmbedImage"
EMBED_TEXT = "/vision.v1.EmbeddingService/EmbedText"
FACES = "/vision.v1.FaceService/DetectFaces"
OCR = "/vision.v1.OcrService/ExtractText"
ANALYZE = "/vision.v1.AnalysisService/AnalyzeImage"
STREAM_ANALYZE = "/vision.v1.AnalysisService/StreamAnalyzeImages"
LIST_MODELS = "/vision.v1.ModelService/ListModels"
GET_MODEL = "/vision.v1.ModelService/GetModel"
SEARCH = "/vision.v1.SearchService/Search"
LIST_PEOPLE = "/vision.v1.PeopleService/ListPeople"
GET_PERSON = "/vision.v1.PeopleService/GetPerson"
UPDATE_PERSON = "/vision.v1.PeopleService/UpdatePerson"
MERGE_PEOPLE = "/vision.v1.PeopleService/MergePeople"


def unary(name: str, method: str, request: Message | bytes, code: grpc.StatusCode,
          reason: str, *fields: str, metadata: tuple[tuple[str, str], ...] = ()) -> Case:
    raw = request if isinstance(request, bytes) else _raw(request)
    return Case(name, method, (raw,), Expected(code, reason, fields), metadata=metadata)


def _header(request_id: str, size: int, **options: Any) -> upload_pb2.UploadHeader:
    return upload_pb2.UploadHeader(request_id=request_id, size_bytes=size, **options)


def detect_stream(*kinds: tuple[str, Any]) -> tuple[bytes, ...]:
    return tuple(_raw(det_pb2.StreamDetectObjectsRequest(**{kind: value})) for kind, value in kinds)


def analyze_stream(*kinds: tuple[str, Any]) -> tuple[bytes, ...]:
    return tuple(_raw(an_pb2.StreamAnalyzeImagesRequest(**{kind: value})) for kind, value in kinds)


def chunk(data: bytes) -> tuple[str, Message]:
    return ("chunk", upload_pb2.ImageChunk(data=data))


END = ("end", upload_pb2.UploadEnd())


def image_upload(request_id: str, content: bytes, **options: Any
                 ) -> list[tuple[str, Message]]:
    return [("header", _header(request_id, len(content), **options)), chunk(content), END]


def streamed(name: str, method: str, messages: tuple[bytes, ...], code: grpc.StatusCode,
             reason: str, *fields: str, whole_call: bool = False) -> Case:
    return Case(name, method, messages, Expected(code, reason, fields), streaming=True,
                whole_call=whole_call)


ANALYSIS = analysis_pb2.AnalysisOptions(objects=detection_pb2.DetectionOptions())

CASES: tuple[Case, ...] = (
    # --- DetectionService.DetectObjects: images
    unary("empty image", DETECT, detect(b""), IA, "EMPTY_IMAGE", "image.content"),
    unary("not an image", DETECT, detect(b"GET / HTTP/1.1\r\n\r\n" * 10), IA, "INVALID_IMAGE",
          "image.content"),
    unary("truncated jpeg", DETECT, detect(JPEG[: len(JPEG) * 2 // 3]), IA, "IMAGE_TRUNCATED",
          "image.content"),
    unary("truncated png", DETECT, detect(PNG[:2000]), IA, "IMAGE_TRUNCATED", "image.content"),
    unary("png chunk claiming 4 GB", DETECT, detect(png_length_bomb()), IA, "IMAGE_TRUNCATED",
          "image.content"),
    unary("gif", DETECT, detect(encode("chelsea.png", ".gif")), IA, "UNSUPPORTED_IMAGE_FORMAT",
          "image.content"),
    unary("tiff", DETECT, detect(encode("chelsea.png", ".tiff")), IA, "UNSUPPORTED_IMAGE_FORMAT",
          "image.content"),
    unary("pdf", DETECT, detect(b"%PDF-1.7\n" + bytes(100)), IA, "UNSUPPORTED_IMAGE_FORMAT",
          "image.content"),
    unary("heif", DETECT, detect(b"\x00\x00\x00\x18ftypheic" + bytes(100)), IA,
          "UNSUPPORTED_IMAGE_FORMAT", "image.content"),
    unary("undecodable png", DETECT, detect(CORRUPT_PNG), IA, "IMAGE_DECODE_FAILED",
          "image.content"),
    unary("100 MP png header", DETECT, detect(HUGE_PNG), IA, "IMAGE_TOO_LARGE", "image.content"),
    unary("scan-bomb jpeg", DETECT, detect(scan_bomb()), IA, "IMAGE_TOO_COMPLEX",
          "image.content"),
    unary("4 MiB of garbage (fits the message limit)", DETECT,
          detect(b"GET / " + bytes((4 << 20) - 6)), IA, "INVALID_IMAGE", "image.content"),
    # --- DetectionService.DetectObjects: options
    unary("unknown model", DETECT, detect(model={"name": "yolo9000"}), NOT_FOUND,
          "MODEL_NOT_FOUND", "options.model.name"),
    unary("unknown version", DETECT, detect(model={"name": "yolox_nano", "version": "7"}),
          NOT_FOUND, "MODEL_NOT_FOUND", "options.model.version"),
    unary("score out of range", DETECT, detect(score_threshold=1.5), IA, "INVALID_OPTION",
          "options.score_threshold"),
    unary("iou and max out of range", DETECT, detect(iou_threshold=-1.0, max_detections=5000),
          IA, "INVALID_OPTION", "options.iou_threshold", "options.max_detections"),
    unary("superscript version", DETECT, detect(model={"name": "yolox_nano", "version": "\u00b2"}),
          IA, "INVALID_OPTION", "options.model.version"),
    unary("arabic-indic version", DETECT,
          detect(model={"name": "yolox_nano", "version": "\u0661"}), IA, "INVALID_OPTION",
          "options.model.version"),
    unary("23-digit version", DETECT, detect(model={"name": "yolox_nano", "version": "9" * 23}),
          IA, "INVALID_OPTION", "options.model.version"),
    unary("100 blank allow-list entries", DETECT, detect(class_allowlist=[" "] * 100), IA,
          "INVALID_OPTION", *(f"options.class_allowlist[{i}]" for i in range(10))),
    unary("2000-character model name", DETECT, detect(model={"name": "m" * 2000}), NOT_FOUND,
          "MODEL_NOT_FOUND", "options.model.name"),
    # --- any RPC: the request itself
    unary("invalid utf-8 in a string field", DETECT,
          _invalid_utf8(detect(model={"name": "MODELNAME"}), "MODELNAME"), IA,
          "MALFORMED_REQUEST", ""),
    unary("truncated message bytes", DETECT, _raw(detect())[:-10], IA, "MALFORMED_REQUEST", ""),
    unary("request id with a space", DETECT, detect(), IA, "INVALID_REQUEST_ID",
          "metadata.x-request-id", metadata=(("x-request-id", "a b"),)),
    unary("request id of 1 MiB", DETECT, detect(), IA, "INVALID_REQUEST_ID",
          "metadata.x-request-id", metadata=(("x-request-id", "r" * 4000),)),
    # --- EmbeddingService
    unary("embed: empty image", EMBED, emb_pb2.EmbedImageRequest(image=_image(b"")), IA,
          "EMPTY_IMAGE", "image.content"),
    unary("embed: unknown model", EMBED, emb_pb2.EmbedImageRequest(
        image=_image(PNG),
        options=embedding_pb2.EmbeddingOptions(model=model_pb2.ModelReference(name="clip"))),
        NOT_FOUND, "MODEL_NOT_FOUND", "options.model.name"),
    unary("embed: negative max classifications", EMBED, emb_pb2.EmbedImageRequest(
        image=_image(PNG), options=embedding_pb2.EmbeddingOptions(max_classifications=-1)),
        IA, "INVALID_OPTION", "options.max_classifications"),
    unary("embed: scan-bomb jpeg", EMBED, emb_pb2.EmbedImageRequest(image=_image(scan_bomb())),
          IA, "IMAGE_TOO_COMPLEX", "image.content"),
    unary("embed text: invalid utf-8", EMBED_TEXT,
          _invalid_utf8(emb_pb2.EmbedTextRequest(text="SOMETEXT"), "SOMETEXT"), IA,
          "MALFORMED_REQUEST", ""),
    # --- FaceService
    unary("faces: score out of range", FACES, face_pb2s.DetectFacesRequest(
        image=_image(PNG), options=face_pb2.FaceOptions(score_threshold=2.0)), IA,
        "INVALID_OPTION", "options.score_threshold"),
    unary("faces: negative max faces", FACES, face_pb2s.DetectFacesRequest(
        image=_image(PNG), options=face_pb2.FaceOptions(max_faces=-3)), IA, "INVALID_OPTION",
        "options.max_faces"),
    unary("faces: truncated jpeg", FACES, face_pb2s.DetectFacesRequest(
        image=_image(JPEG[:5000])), IA, "IMAGE_TRUNCATED", "image.content"),
    unary("faces: scan-bomb jpeg", FACES, face_pb2s.DetectFacesRequest(image=_image(scan_bomb())),
          IA, "IMAGE_TOO_COMPLEX", "image.content"),
    # --- OcrService
    unary("ocr: unknown model", OCR, ocr_pb2s.ExtractTextRequest(
        image=_image(PNG),
        options=ocr_pb2.OcrOptions(model=model_pb2.ModelReference(name="tesseract"))), NOT_FOUND,
        "MODEL_NOT_FOUND", "options.model.name"),
    unary("ocr: not an image", OCR, ocr_pb2s.ExtractTextRequest(image=_image(b"hello" * 20)), IA,
          "INVALID_IMAGE", "image.content"),
    unary("ocr: scan-bomb jpeg", OCR, ocr_pb2s.ExtractTextRequest(image=_image(scan_bomb())), IA,
          "IMAGE_TOO_COMPLEX", "image.content"),
    # --- AnalysisService.AnalyzeImage
    unary("analyze: empty image", ANALYZE, an_pb2.AnalyzeImageRequest(
        image=_image(b""), options=ANALYSIS), IA, "EMPTY_IMAGE", "image.content"),
    unary("analyze: scan-bomb jpeg", ANALYZE, an_pb2.AnalyzeImageRequest(
        image=_image(scan_bomb()), options=ANALYSIS), IA, "IMAGE_TOO_COMPLEX", "image.content"),
    # --- ModelService
    unary("get model: unknown", GET_MODEL, mod_pb2.GetModelRequest(name="nope"), NOT_FOUND,
          "MODEL_NOT_FOUND", "name"),
    unary("list models: forged page token", LIST_MODELS,
          mod_pb2.ListModelsRequest(page_token="not-a-token"), IA, "INVALID_ARGUMENT",
          "page_token"),
    # --- DetectionService.StreamDetectObjects (every upload mistake fails that image)
    streamed("stream: chunk with no header", STREAM_DETECT, detect_stream(chunk(b"x"), END),
             IA, "UPLOAD_PROTOCOL", "header"),
    streamed("stream: end with no image", STREAM_DETECT, detect_stream(END), IA,
             "UPLOAD_PROTOCOL", "end"),
    streamed("stream: size_bytes 0", STREAM_DETECT, detect_stream(
        ("header", _header("a", 0)), END), IA, "EMPTY_IMAGE", "header.size_bytes"),
    streamed("stream: size_bytes negative", STREAM_DETECT, detect_stream(
        ("header", _header("a", -1)), END), IA, "UPLOAD_PROTOCOL", "header.size_bytes"),
    streamed("stream: size_bytes over the limit", STREAM_DETECT, detect_stream(
        ("header", _header("a", 64 << 20)), END), IA, "IMAGE_TOO_LARGE", "header.size_bytes"),
    streamed("stream: no request id", STREAM_DETECT, detect_stream(
        ("header", _header("", 10)), END), IA, "UPLOAD_PROTOCOL", "header.request_id"),
    streamed("stream: options of another RPC", STREAM_DETECT, detect_stream(
        ("header", _header("a", 10, analysis=ANALYSIS)), END), IA, "UPLOAD_PROTOCOL",
        "header.analysis"),
    streamed("stream: chunks beyond size_bytes", STREAM_DETECT, detect_stream(
        ("header", _header("a", 3)), chunk(b"abcd"), END), IA, "UPLOAD_PROTOCOL", "chunk.data"),
    streamed("stream: closed before the end marker", STREAM_DETECT, detect_stream(
        ("header", _header("a", 3)), chunk(b"abc")), IA, "UPLOAD_PROTOCOL", "end"),
    streamed("stream: scan-bomb jpeg", STREAM_DETECT, detect_stream(
        *image_upload("bomb", scan_bomb())), IA, "IMAGE_TOO_COMPLEX", "chunk.data"),
    streamed("stream: score out of range", STREAM_DETECT, detect_stream(
        *image_upload("a", PNG, detection=detection_pb2.DetectionOptions(score_threshold=7))),
        IA, "INVALID_OPTION", "header.detection.score_threshold"),
    # Exactly the cap (limits.max_stream_protocol_errors): a client still sending after the
    # server ended the call sees its own send fail (INTERNAL in grpc's client), not the status.
    streamed("stream: 16 bare end markers", STREAM_DETECT, detect_stream(*[END] * 16), IA,
             "TOO_MANY_PROTOCOL_ERRORS", "", whole_call=True),
    streamed("stream: invalid utf-8 in the header", STREAM_DETECT, (_invalid_utf8(
        det_pb2.StreamDetectObjectsRequest(header=_header("REQUESTID", 10)), "REQUESTID"),),
        IA, "MALFORMED_REQUEST", "", whole_call=True),
    # --- AnalysisService.StreamAnalyzeImages
    streamed("analyze stream: scan-bomb jpeg", STREAM_ANALYZE, analyze_stream(
        *image_upload("bomb", scan_bomb(), analysis=ANALYSIS)), IA, "IMAGE_TOO_COMPLEX",
        "chunk.data"),
    streamed("analyze stream: duplicate request id", STREAM_ANALYZE, analyze_stream(
        *image_upload("a", PNG, analysis=ANALYSIS),
        ("header", _header("a", 10, analysis=ANALYSIS)), END), IA, "UPLOAD_PROTOCOL",
        "header.request_id"),
    streamed("analyze stream: os/2 bitmap with zero width", STREAM_ANALYZE,
             analyze_stream(*image_upload("os2", os2_bmp(0, 2), analysis=ANALYSIS)),
             IA, "INVALID_IMAGE", "chunk.data"),
    unary("list models: negative page size", LIST_MODELS,
          mod_pb2.ListModelsRequest(page_size=-1), IA, "INVALID_ARGUMENT", "page_size"),
    unary("get model: empty name", GET_MODEL, mod_pb2.GetModelRequest(name=""), IA,
          "INVALID_ARGUMENT", "name"),
    # --- SearchService.Search: more like this, score floors, browsing, people
    unary("search: score floor on words", SEARCH, search_pb2.SearchRequest(
        text="cat", min_score=0.5), IA, "INVALID_ARGUMENT", "min_score"),
    unary("search: score floor while browsing", SEARCH, search_pb2.SearchRequest(
        filters=search_pb2.SearchFilters(labels=["cat"]), min_score=0.5), IA,
        "INVALID_ARGUMENT", "min_score"),
    unary("search: score floor above 1", SEARCH, search_pb2.SearchRequest(
        similar_to_id="x", min_score=2), IA, "INVALID_ARGUMENT", "min_score"),
    unary("search: no query, only an index", SEARCH, search_pb2.SearchRequest(
        filters=search_pb2.SearchFilters(indexes=[search_pb2.INDEX_IMAGES])), IA,
        "INVALID_ARGUMENT", "query"),
    unary("search: empty person id", SEARCH, search_pb2.SearchRequest(
        filters=search_pb2.SearchFilters(person_ids=[""])), IA, "INVALID_ARGUMENT",
        "filters.person_ids[0]"),
    unary("search: similar to an unknown image", SEARCH, search_pb2.SearchRequest(
        similar_to_id="never-ingested"), NOT_FOUND, "NOT_FOUND", "similar_to_id"),
    # --- PeopleService
    unary("list people: forged page token", LIST_PEOPLE,
          people_pb2.ListPeopleRequest(page_token="not-a-token"), IA, "INVALID_ARGUMENT",
          "page_token"),
    unary("list people: page size over 100", LIST_PEOPLE,
          people_pb2.ListPeopleRequest(page_size=101), IA, "INVALID_ARGUMENT", "page_size"),
    unary("get person: empty id", GET_PERSON, people_pb2.GetPersonRequest(id=""), IA,
          "INVALID_ARGUMENT", "id"),
    unary("get person: unknown", GET_PERSON, people_pb2.GetPersonRequest(id="p-nobody"),
          NOT_FOUND, "NOT_FOUND", "id"),
    unary("update person: name not printable", UPDATE_PERSON, people_pb2.UpdatePersonRequest(
        person=person_pb2.Person(id="p-1", name="a\x00b")), IA, "INVALID_ARGUMENT",
        "person.name"),
    unary("update person: unknown", UPDATE_PERSON, people_pb2.UpdatePersonRequest(
        person=person_pb2.Person(id="p-nobody", name="Ann")), NOT_FOUND, "NOT_FOUND",
        "person.id"),
    unary("merge people: the target among the sources", MERGE_PEOPLE,
          people_pb2.MergePeopleRequest(person_ids=["p-1"], target_id="p-1"), IA,
          "INVALID_ARGUMENT", "person_ids[0]"),
    unary("merge people: unknown target", MERGE_PEOPLE,
          people_pb2.MergePeopleRequest(person_ids=["p-1"], target_id="p-nobody"), NOT_FOUND,
          "NOT_FOUND", "target_id"),
    unary("embed: not an image", EMBED, emb_pb2.EmbedImageRequest(image=_image(b"\x00" * 64)), IA,
          "INVALID_IMAGE", "image.content"),
    unary("detect: model pinned to a bad version of another task's model", DETECT,
          detect(model={"name": "mobilenet_v2"}), NOT_FOUND, "MODEL_NOT_FOUND",
          "options.model.name"),
)
