"""Triton's inference messages (the KServe v2 protocol over gRPC) built and read directly from
numpy arrays: raw little-endian tensor bytes in `raw_input_contents`, BYTES elements each
prefixed by its 4-byte length.

tritonclient's Python wrappers (InferInput, InferResult) do the same with several copies and
checks per tensor; on a nearly free model they cost more server CPU per call than the rest of
the call path (bench/REPORT.md, the gateway profile), so the server builds the request itself
and uses tritonclient only for its generated stub and messages."""

from __future__ import annotations

import functools
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from tritonclient.grpc import service_pb2

from server.triton.tensors import TensorSpec

Array = npt.NDArray[Any]

_DTYPES: dict[str, npt.DTypeLike] = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
    "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
    "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
}
_LENGTH = struct.Struct("<I")


def tensor_bytes(array: Array, datatype: str) -> bytes:
    """The raw contents of one input tensor in Triton's wire layout."""
    if datatype == "BYTES":
        parts: list[bytes] = []
        for value in array.reshape(-1):
            item = bytes(value)  # no copy for bytes; one join copies the image once
            parts += (_LENGTH.pack(len(item)), item)
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=_DTYPES[datatype]).tobytes()


def read_tensor(raw: bytes, datatype: str, shape: Sequence[int]) -> Array:
    """One output tensor from its raw contents (BYTES elements as Python bytes)."""
    if datatype != "BYTES":
        return np.frombuffer(raw, dtype=_DTYPES[datatype]).reshape(shape)
    items: list[bytes] = []
    offset, end = 0, len(raw)
    while offset < end:
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += 4
        items.append(raw[offset:offset + length])
        offset += length
    values = np.empty(len(items), dtype=np.object_)
    values[:] = items
    return values.reshape(shape)


def infer_request(
    model_name: str, model_version: str, specs: Sequence[TensorSpec],
    inputs: Mapping[str, Array], outputs: Sequence[str], request_id: str, timeout_us: int,
) -> service_pb2.ModelInferRequest:
    """A ModelInferRequest carrying `inputs` (by spec, each with its batch dimension) and asking
    for `outputs`; `timeout_us` is Triton's own per-request timeout (its queue policy drops a
    request still queued when it expires)."""
    request = service_pb2.ModelInferRequest()
    # Copying the fixed part (names, datatypes, outputs) in C costs a third of building it.
    request.CopyFrom(_fixed_part(model_name, model_version, tuple(specs), tuple(outputs)))
    request.id = request_id
    for tensor, spec in zip(request.inputs, specs, strict=True):
        tensor.shape.extend(inputs[spec.name].shape)
    request.raw_input_contents.extend(
        [tensor_bytes(inputs[spec.name], spec.datatype) for spec in specs])
    request.parameters["timeout"].int64_param = timeout_us
    return request


@functools.lru_cache(maxsize=256)
def _fixed_part(model_name: str, model_version: str, specs: tuple[TensorSpec, ...],
                outputs: tuple[str, ...]) -> service_pb2.ModelInferRequest:
    return service_pb2.ModelInferRequest(
        model_name=model_name, model_version=model_version,
        inputs=[service_pb2.ModelInferRequest.InferInputTensor(
            name=spec.name, datatype=spec.datatype) for spec in specs],
        outputs=[service_pb2.ModelInferRequest.InferRequestedOutputTensor(name=name)
                 for name in outputs])


def response_outputs(response: service_pb2.ModelInferResponse) -> dict[str, Array]:
    """Every output tensor of a ModelInferResponse, by name."""
    return {tensor.name: read_tensor(raw, tensor.datatype, tensor.shape)
            for tensor, raw in zip(response.outputs, response.raw_output_contents, strict=True)}
