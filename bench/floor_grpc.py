"""The floor of the trivial-model bench: a bare grpc.aio DetectionService whose DetectObjects makes
the same Triton call as vision-grpc over one shared channel (the generated stub, the request
built from raw tensor bytes by server/triton/wire.py) and answers the detections — and nothing
else: no validation, header inspection, request ids, auth, admission, metrics, logs, error
details or aggregation. What it costs per call is what grpc.aio itself costs here for a server
call plus a client call; it exists to be measured against, never to be deployed.

`python -m bench.floor_grpc --port P --triton-url HOST:PORT --model M`
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import service_pb2_grpc

from server.triton import detection as tensors
from server.triton import wire
from server.triton.calls import scalar
from server.triton.tensors import IMAGE
from vision.v1 import detection_pb2, geometry_pb2
from vision.v1 import detection_service_pb2 as det_pb2

HOST = "127.0.0.1"
SERVICE = "vision.v1.DetectionService"  # its unary method only
TRITON_TIMEOUT_S = 30.0
# vision-grpc's default thresholds, so that Triton does the same work for both
SCORE_THRESHOLD = 0.25
IOU_THRESHOLD = 0.45


class FloorServicer:
    def __init__(self, triton_url: str, model: str) -> None:
        channel = grpc.aio.insecure_channel(triton_url)  # made in the loop: it binds to it
        self._stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        self._model = model

    async def DetectObjects(  # noqa: N802 (gRPC method name)
        self, request: det_pb2.DetectObjectsRequest, context: Any
    ) -> det_pb2.DetectObjectsResponse:
        inputs = {IMAGE: scalar(request.image.content, np.object_),
                  tensors.SCORE_THRESHOLD: scalar(SCORE_THRESHOLD, np.float32),
                  tensors.IOU_THRESHOLD: scalar(IOU_THRESHOLD, np.float32)}
        answer = await self._stub.ModelInfer(wire.infer_request(
            self._model, "", tensors.TENSORS.inputs, inputs, tensors.TENSORS.output_names, "",
            int(TRITON_TIMEOUT_S * 1_000_000)), timeout=TRITON_TIMEOUT_S)
        outputs = wire.response_outputs(answer)
        return det_pb2.DetectObjectsResponse(detections=[
            detection_pb2.Detection(label=label.decode(), class_id=class_id, score=score,
                                    box=geometry_pb2.BoundingBox(
                                        x_min=box[0], y_min=box[1], x_max=box[2], y_max=box[3]))
            for box, score, class_id, label in zip(
                outputs[tensors.BOXES].reshape(-1, 4).tolist(),
                outputs[tensors.SCORES].reshape(-1).tolist(),
                outputs[tensors.CLASS_IDS].reshape(-1).tolist(),
                outputs[tensors.LABELS].reshape(-1).tolist(), strict=True)
            if class_id >= 0])


async def serve(port: int, triton_url: str, model: str) -> None:
    server = grpc.aio.server()
    servicer = FloorServicer(triton_url, model)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {
        "DetectObjects": grpc.unary_unary_rpc_method_handler(
            servicer.DetectObjects, request_deserializer=det_pb2.DetectObjectsRequest.FromString,
            response_serializer=det_pb2.DetectObjectsResponse.SerializeToString)}),))
    server.add_insecure_port(f"{HOST}:{port}")
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--triton-url", required=True)
    parser.add_argument("--model", required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.triton_url, args.model))


if __name__ == "__main__":
    main()
