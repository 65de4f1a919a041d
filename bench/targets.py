"""What one benchmark call is, per kind: a health check, a unary DetectObjects (or EmbedImage,
DetectFaces, ExtractText), a Triton infer
over a shared client or a client made per call (of any model with the detection tensors), a whole
StreamDetectObjects upload, an HTTP POST to the FastAPI peer (bench/peer_fastapi.py). Each target
owns the one channel (or client, or connection pool) it reuses and is opened once per worker run,
before timing starts."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal, Protocol

import aiohttp
import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.grpc.aio import InferenceServerClient

from bench.payloads import PayloadName, payload
from server.triton import detection as tensors
from server.triton.tensors import IMAGE
from vision.v1 import detection_pb2, face_pb2, image_pb2, model_pb2
from vision.v1 import detection_service_pb2 as det_pb2
from vision.v1 import detection_service_pb2_grpc as det_grpc
from vision.v1 import embedding_service_pb2 as embed_pb2
from vision.v1 import embedding_service_pb2_grpc as embed_grpc
from vision.v1 import face_service_pb2 as face_svc_pb2
from vision.v1 import face_service_pb2_grpc as face_grpc
from vision.v1 import ocr_service_pb2 as ocr_pb2
from vision.v1 import ocr_service_pb2_grpc as ocr_grpc
from vision_client.client import StreamImage, detection_uploads

TargetKind = Literal["health", "detect", "embed", "faces", "ocr", "triton", "triton_per_request",
                     "stream", "http_detect"]

ENSEMBLE = "yolox_nano"  # the Triton targets' model when a run names none
SCORE_THRESHOLD = 0.25
IOU_THRESHOLD = 0.45
# The service's own limits: 32 MiB images through the stream, 4 MiB unary (gRPC's default).
STREAM_CHANNEL_OPTIONS = [("grpc.max_send_message_length", 64 << 20),
                          ("grpc.max_receive_message_length", 64 << 20)]
CALL_TIMEOUT_S = 120.0


class Target(Protocol):
    async def open(self) -> None: ...

    async def call(self, index: int) -> int:
        """One request (index picks the image); returns how many images it completed."""
        ...

    async def close(self) -> None: ...


class HealthTarget:
    """grpc.health.v1 Check on the server: the trivial RPC that shows the generator's ceiling."""

    def __init__(self, address: str) -> None:
        self._channel = grpc.aio.insecure_channel(address)
        self._stub = health_pb2_grpc.HealthStub(self._channel)
        self._request = health_pb2.HealthCheckRequest(service="")

    async def open(self) -> None:
        await self._channel.channel_ready()

    async def call(self, index: int) -> int:
        await self._stub.Check(self._request, timeout=CALL_TIMEOUT_S)
        return 1

    async def close(self) -> None:
        await self._channel.close()


class DetectTarget:
    """DetectionService/DetectObjects (unary) over one shared channel, server-side default options
    (score 0.25, IoU 0.45): the same work the direct Triton calls ask for. The server's default
    model unless the run names one."""

    def __init__(self, address: str, images: tuple[bytes, ...], model: str | None = None) -> None:
        self._channel = grpc.aio.insecure_channel(address)
        self._stub = det_grpc.DetectionServiceStub(self._channel)
        options = detection_pb2.DetectionOptions(model=model_pb2.ModelReference(name=model)) \
            if model else None
        self._requests = [det_pb2.DetectObjectsRequest(image=image_pb2.Image(content=image),
                                                       options=options)
                          for image in images]

    async def open(self) -> None:
        await self._channel.channel_ready()

    async def call(self, index: int) -> int:
        await self._stub.DetectObjects(self._requests[index % len(self._requests)],
                                timeout=CALL_TIMEOUT_S)
        return 1

    async def close(self) -> None:
        await self._channel.close()


class UnaryImageTarget:
    """One image per unary call of EmbedImage, DetectFaces (face embeddings included) or
    ExtractText over one shared channel, with the service's default model and options."""

    def __init__(self, address: str, images: tuple[bytes, ...],
                 kind: Literal["embed", "faces", "ocr"]) -> None:
        self._channel = grpc.aio.insecure_channel(address)
        self._call: Any
        self._requests: list[Any]
        if kind == "embed":
            self._call = embed_grpc.EmbeddingServiceStub(self._channel).EmbedImage
            self._requests = [embed_pb2.EmbedImageRequest(image=image_pb2.Image(content=image))
                              for image in images]
        elif kind == "faces":
            self._call = face_grpc.FaceServiceStub(self._channel).DetectFaces
            options = face_pb2.FaceOptions(include_embeddings=True)
            self._requests = [face_svc_pb2.DetectFacesRequest(
                image=image_pb2.Image(content=image), options=options) for image in images]
        else:
            self._call = ocr_grpc.OcrServiceStub(self._channel).ExtractText
            self._requests = [ocr_pb2.ExtractTextRequest(image=image_pb2.Image(content=image))
                              for image in images]

    async def open(self) -> None:
        await self._channel.channel_ready()

    async def call(self, index: int) -> int:
        await self._call(self._requests[index % len(self._requests)], timeout=CALL_TIMEOUT_S)
        return 1

    async def close(self) -> None:
        await self._channel.close()


def _infer_inputs(content: bytes) -> list[InferInput]:
    """The ensemble's inputs as server/triton/detection.py builds them: [1, 1] tensors."""
    values = {
        IMAGE: np.array([[content]], dtype=np.object_),
        tensors.SCORE_THRESHOLD: np.array([[SCORE_THRESHOLD]], dtype=np.float32),
        tensors.IOU_THRESHOLD: np.array([[IOU_THRESHOLD]], dtype=np.float32),
    }
    inputs = []
    for spec in tensors.TENSORS.inputs:
        tensor = InferInput(spec.name, list(values[spec.name].shape), spec.datatype)
        tensor.set_data_from_numpy(values[spec.name])
        inputs.append(tensor)
    return inputs


async def _infer(client: InferenceServerClient, model: str, content: bytes,
                 outputs: list[InferRequestedOutput]) -> None:
    result: Any = await client.infer(model, _infer_inputs(content), outputs=outputs,
                                     client_timeout=CALL_TIMEOUT_S)
    for name in tensors.TENSORS.output_names:  # read the answer, as a real caller would
        result.as_numpy(name)


class TritonTarget:
    """A detection model (the ensemble by default) straight on Triton through one shared
    `tritonclient.grpc.aio` client."""

    def __init__(self, address: str, images: tuple[bytes, ...], model: str = ENSEMBLE) -> None:
        self._address = address
        self._images = images
        self._model = model
        self._outputs = [InferRequestedOutput(name) for name in tensors.TENSORS.output_names]
        self._client: InferenceServerClient | None = None

    async def open(self) -> None:
        self._client = InferenceServerClient(url=self._address)
        await self._client.is_server_ready()

    async def call(self, index: int) -> int:
        assert self._client is not None
        await _infer(self._client, self._model, self._images[index % len(self._images)],
                     self._outputs)
        return 1

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()


class TritonPerRequestTarget:
    """The seed's pattern: a new `InferenceServerClient` (channel + stub) for every call, closed
    after it."""

    def __init__(self, address: str, images: tuple[bytes, ...], model: str = ENSEMBLE) -> None:
        self._address = address
        self._images = images
        self._model = model
        self._outputs = [InferRequestedOutput(name) for name in tensors.TENSORS.output_names]

    async def open(self) -> None:
        return None

    async def call(self, index: int) -> int:
        client = InferenceServerClient(url=self._address)
        try:
            await _infer(client, self._model, self._images[index % len(self._images)],
                         self._outputs)
        finally:
            await client.close()
        return 1

    async def close(self) -> None:
        return None


class StreamTarget:
    """One StreamDetectObjects call that uploads `per_stream` images (header, 1 MiB chunks, end
    marker each, as the SDK sends them) and reads every result; each failed result counts as an
    error."""

    def __init__(self, address: str, images: tuple[bytes, ...], per_stream: int) -> None:
        self._channel = grpc.aio.insecure_channel(address, options=STREAM_CHANNEL_OPTIONS)
        self._stub = det_grpc.DetectionServiceStub(self._channel)
        self._images = images
        self._per_stream = per_stream

    async def open(self) -> None:
        await self._channel.channel_ready()

    def _uploads(self, index: int) -> Iterator[det_pb2.StreamDetectObjectsRequest]:
        return detection_uploads(
            StreamImage(f"{index}-{i}", self._images[(index + i) % len(self._images)])
            for i in range(self._per_stream))

    async def call(self, index: int) -> int:
        ok = 0
        async for response in self._stub.StreamDetectObjects(self._uploads(index),
                                                       timeout=CALL_TIMEOUT_S):
            if response.status.code != 0:
                raise RuntimeError(f"stream image failed: {response.status.message}")
            ok += 1
        if ok != self._per_stream:
            raise RuntimeError(f"stream answered {ok} of {self._per_stream} images")
        return ok

    async def close(self) -> None:
        await self._channel.close()


class HttpDetectTarget:
    """POST /v1/detect on the FastAPI peer: the encoded image as the raw body, the model (when the
    run names one) as a query parameter, the JSON answer parsed. One aiohttp session whose
    keep-alive pool holds as many connections as this worker keeps calls in flight."""

    def __init__(self, address: str, images: tuple[bytes, ...], model: str | None,
                 pool_size: int) -> None:
        self._url = f"http://{address}/v1/detect"
        self._images = images
        self._params = {"model": model} if model else {}
        self._pool_size = max(1, pool_size)
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._pool_size),
            timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT_S))

    async def call(self, index: int) -> int:
        assert self._session is not None
        async with self._session.post(self._url, data=self._images[index % len(self._images)],
                                      params=self._params,
                                      headers={"Content-Type": "image/jpeg"}) as response:
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {(await response.text())[:200]}")
            await response.json()  # read the answer, as a real caller would
        return 1

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def make_target(kind: TargetKind, address: str, images: PayloadName, per_stream: int = 1,
                model: str | None = None, in_flight: int = 1) -> Target:
    """model: the Triton model (direct kinds; the ensemble when None) or the model the call
    names (service and peer kinds; their default when None). in_flight sizes HTTP pools."""
    content = payload(images)
    if kind == "health":
        return HealthTarget(address)
    if kind == "detect":
        return DetectTarget(address, content, model)
    if kind in ("embed", "faces", "ocr"):
        return UnaryImageTarget(address, content, kind)
    if kind == "triton":
        return TritonTarget(address, content, model or ENSEMBLE)
    if kind == "triton_per_request":
        return TritonPerRequestTarget(address, content, model or ENSEMBLE)
    if kind == "http_detect":
        return HttpDetectTarget(address, content, model, in_flight)
    return StreamTarget(address, content, per_stream)
