"""The FastAPI peer of the trivial-model bench: the gateway design the architecture guide started
from, written the way a careful FastAPI service would be — uvicorn with uvloop and httptools, one
worker, access log off, one shared `tritonclient.grpc.aio` client made in the lifespan — making
the same Triton call as vision-grpc (same model, same tensors, same default thresholds) and
answering the detections as JSON. It exists to be measured against, never to be deployed.

`python -m bench.peer_fastapi --port P --triton-url HOST:PORT --models M [M ...]` (the first
model is the default); `POST /v1/detect?model=&score_threshold=&iou_threshold=` with the encoded
image as the raw body; `GET /health` is 200 once Triton has the default model ready.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Annotated, Any

import numpy as np
import uvicorn
from fastapi import FastAPI, HTTPException, Query, Request
from pydantic import BaseModel
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.grpc.aio import InferenceServerClient
from tritonclient.utils import InferenceServerException

from server.triton import detection as tensors
from server.triton.tensors import IMAGE, IMAGE_SIZE, IMAGE_STATUS, STATUS_OK

HOST = "127.0.0.1"
# vision-grpc's unary limit and default options, so that both gateways take the same requests.
MAX_IMAGE_BYTES = 4 << 20
DEFAULT_SCORE_THRESHOLD = 0.25
DEFAULT_IOU_THRESHOLD = 0.45
TRITON_TIMEOUT_S = 30.0


class Box(BaseModel):
    x_min: float
    y_min: float
    x_max: float
    y_max: float


class Detection(BaseModel):
    label: str
    class_id: int
    score: float
    box: Box  # pixels of the original image
    normalized_box: Box  # the same box in [0, 1]


class DetectResponse(BaseModel):
    detections: list[Detection]
    width: int
    height: int
    model: str


def _inputs(content: bytes, score_threshold: float, iou_threshold: float) -> list[InferInput]:
    values = {
        IMAGE: np.array([[content]], dtype=np.object_),
        tensors.SCORE_THRESHOLD: np.array([[score_threshold]], dtype=np.float32),
        tensors.IOU_THRESHOLD: np.array([[iou_threshold]], dtype=np.float32),
    }
    inputs = []
    for spec in tensors.TENSORS.inputs:
        tensor = InferInput(spec.name, [1, 1], spec.datatype)
        tensor.set_data_from_numpy(values[spec.name])
        inputs.append(tensor)
    return inputs


def _response(result: Any, model: str) -> DetectResponse:
    height, width = (int(v) for v in result.as_numpy(IMAGE_SIZE).reshape(-1)[:2])
    scale_x, scale_y = 1.0 / max(width, 1), 1.0 / max(height, 1)
    detections = []
    for box, score, class_id, label in zip(
            result.as_numpy(tensors.BOXES).reshape(-1, 4).tolist(),
            result.as_numpy(tensors.SCORES).reshape(-1).tolist(),
            result.as_numpy(tensors.CLASS_IDS).reshape(-1).tolist(),
            result.as_numpy(tensors.LABELS).reshape(-1).tolist(), strict=True):
        if class_id < 0:  # padding row
            continue
        x1, y1, x2, y2 = box
        detections.append(Detection(
            label=label.decode() if isinstance(label, bytes) else str(label),
            class_id=class_id, score=score, box=Box(x_min=x1, y_min=y1, x_max=x2, y_max=y2),
            normalized_box=Box(x_min=x1 * scale_x, y_min=y1 * scale_y, x_max=x2 * scale_x,
                               y_max=y2 * scale_y)))
    return DetectResponse(detections=detections, width=width, height=height, model=model)


def create_app(triton_url: str, models: Sequence[str]) -> FastAPI:
    """The app; its Triton client is made in the lifespan, inside uvicorn's running loop."""
    default_model = models[0]
    allowed = frozenset(models)
    outputs = [InferRequestedOutput(name) for name in tensors.TENSORS.output_names]
    clients: list[InferenceServerClient] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        clients.append(InferenceServerClient(url=triton_url))
        try:
            yield
        finally:
            await clients.pop().close()

    app = FastAPI(title="FastAPI peer (bench only)", lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url=None)

    @app.get("/health")
    async def health() -> dict[str, str]:
        try:
            ready = bool(await clients[0].is_model_ready(default_model))
        except InferenceServerException:
            ready = False
        if not ready:
            raise HTTPException(503, "Triton or the default model is not ready")
        return {"status": "SERVING"}

    @app.post("/v1/detect")
    async def detect(
        request: Request,
        model: str | None = None,
        score_threshold: Annotated[float, Query(ge=0, le=1)] = DEFAULT_SCORE_THRESHOLD,
        iou_threshold: Annotated[float, Query(ge=0, le=1)] = DEFAULT_IOU_THRESHOLD,
    ) -> DetectResponse:
        name = model or default_model
        if name not in allowed:
            raise HTTPException(404, f"unknown model {name!r}")
        content = await request.body()
        if not content:
            raise HTTPException(400, "the request body must be the encoded image")
        if len(content) > MAX_IMAGE_BYTES:
            raise HTTPException(413, f"images are limited to {MAX_IMAGE_BYTES} bytes")
        try:
            result = await clients[0].infer(
                name, _inputs(content, score_threshold, iou_threshold), outputs=outputs,
                client_timeout=TRITON_TIMEOUT_S)
        except InferenceServerException as exc:
            raise HTTPException(502, "inference failed") from exc
        if int(result.as_numpy(IMAGE_STATUS).reshape(-1)[0]) != STATUS_OK:
            raise HTTPException(422, "the image could not be decoded")
        return _response(result, name)

    return app


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.peer_fastapi", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--triton-url", required=True, help="Triton's gRPC HOST:PORT")
    parser.add_argument("--models", nargs="+", required=True,
                        help="models callers may name; the first is the default")
    args = parser.parse_args(argv)
    uvicorn.run(create_app(args.triton_url, args.models), host=HOST, port=args.port,
                loop="uvloop", http="httptools", workers=1, access_log=False,
                log_level="warning")


if __name__ == "__main__":
    main()
