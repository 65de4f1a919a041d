"""Every bad input to Detect gets its code, ErrorInfo reason and BadRequest field; the server
keeps serving afterwards."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from tests.images import encode, photo
from tests.integration.status_details import reason, status_of, violations
from vision.v1 import detection_pb2, image_pb2
from vision.v1 import detection_service_pb2 as det_pb2
from vision.v1 import detection_service_pb2_grpc as det_grpc

JPEG = photo("obama.jpg")
PNG = photo("chelsea.png")
CORRUPT_PNG = PNG[:5000] + bytes(100_000) + PNG[105_000:]


def request(content: bytes, **options: Any) -> det_pb2.DetectObjectsRequest:
    return det_pb2.DetectObjectsRequest(image=image_pb2.Image(content=content),
                                 options=detection_pb2.DetectionOptions(**options))


CASES = [
    ("empty", request(b""), grpc.StatusCode.INVALID_ARGUMENT, "EMPTY_IMAGE", ["image.content"]),
    ("not an image", request(b"GET / HTTP/1.1\r\n\r\n" * 10), grpc.StatusCode.INVALID_ARGUMENT,
     "INVALID_IMAGE", ["image.content"]),
    ("truncated jpeg", request(JPEG[: len(JPEG) * 2 // 3]), grpc.StatusCode.INVALID_ARGUMENT,
     "IMAGE_TRUNCATED", ["image.content"]),
    ("gif", request(encode("chelsea.png", ".gif")), grpc.StatusCode.INVALID_ARGUMENT,
     "UNSUPPORTED_IMAGE_FORMAT", ["image.content"]),
    ("undecodable png", request(CORRUPT_PNG), grpc.StatusCode.INVALID_ARGUMENT,
     "IMAGE_DECODE_FAILED", ["image.content"]),
    ("unknown model", request(PNG, model={"name": "yolo9000"}), grpc.StatusCode.NOT_FOUND,
     "MODEL_NOT_FOUND", ["options.model.name"]),
    ("unknown version", request(PNG, model={"name": "yolox_nano", "version": "7"}),
     grpc.StatusCode.NOT_FOUND, "MODEL_NOT_FOUND", ["options.model.version"]),
    ("score out of range", request(PNG, score_threshold=1.5), grpc.StatusCode.INVALID_ARGUMENT,
     "INVALID_OPTION", ["options.score_threshold"]),
    ("iou and max out of range", request(PNG, iou_threshold=-1.0, max_detections=5000),
     grpc.StatusCode.INVALID_ARGUMENT, "INVALID_OPTION",
     ["options.iou_threshold", "options.max_detections"]),
    ("superscript version", request(PNG, model={"name": "yolox_nano", "version": "\u00b2"}),
     grpc.StatusCode.INVALID_ARGUMENT, "INVALID_OPTION", ["options.model.version"]),
    ("arabic-indic version", request(PNG, model={"name": "yolox_nano", "version": "\u0661"}),
     grpc.StatusCode.INVALID_ARGUMENT, "INVALID_OPTION", ["options.model.version"]),
    ("23-digit version", request(PNG, model={"name": "yolox_nano", "version": "9" * 23}),
     grpc.StatusCode.INVALID_ARGUMENT, "INVALID_OPTION", ["options.model.version"]),
    # errors that once outgrew gRPC's metadata limit: capped, so still the documented error
    ("100 blank allow-list entries", request(PNG, class_allowlist=[" "] * 100),
     grpc.StatusCode.INVALID_ARGUMENT, "INVALID_OPTION",
     [f"options.class_allowlist[{i}]" for i in range(10)]),
    ("2000-character model name", request(PNG, model={"name": "m" * 2000}),
     grpc.StatusCode.NOT_FOUND, "MODEL_NOT_FOUND", ["options.model.name"]),
]


@pytest.mark.parametrize(("case", "req", "code", "why", "fields"), CASES, ids=[c[0] for c in CASES])
async def test_bad_input_gets_status_and_details(
    stub: det_grpc.DetectionServiceAsyncStub, case: str, req: det_pb2.DetectObjectsRequest,
    code: grpc.StatusCode, why: str, fields: list[str],
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.DetectObjects(req, timeout=30)
    assert caught.value.code() == code, caught.value.details()
    status = status_of(caught.value)
    assert (reason(status), violations(status)) == (why, fields)
    # the server is unharmed
    response = await stub.DetectObjects(request(PNG), timeout=30)
    assert response.detections[0].label == "cat"
