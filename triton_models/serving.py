"""What the TritonPythonModel classes share: reading inputs by name, the network-step model
(the CPU configuration's stand-in for Triton's onnxruntime backend), and the execute shape of a
fused model (decode, network and post-processing in one step).

`pb_utils` is the backend's module (triton_python_backend_utils), which only a stub can import;
each model.py imports it and hands it in.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

from triton_models.steps import OnnxNetwork, images_per_run, intra_op_threads, onnx_session


def read_input(pb_utils: ModuleType, request: Any, name: str) -> npt.NDArray[Any]:
    return np.asarray(pb_utils.get_input_tensor_by_name(request, name).as_numpy())


def read_labels(path: Path, count: int | None = None) -> list[str]:
    """The class names, one a line; ValueError (the model then fails to load) when there are
    not `count` of them."""
    labels = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if count is not None and len(labels) != count:
        raise ValueError(f"{path.name} has {len(labels)} names, the network {count} classes")
    return labels


def invalid_argument(pb_utils: ModuleType, message: str) -> Any:
    return pb_utils.InferenceResponse(
        error=pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG))


class NetworkStep:
    """A network step's model.py on the CPU configuration: its 1/model.onnx through
    onnxruntime, tensor names from the model config, the requests of one input shape in one
    run. On GPU, Triton's onnxruntime backend loads the same file (config.pbtxt)."""

    def __init__(self, pb_utils: ModuleType, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        (model_input,) = config["input"]
        self.pb_utils = pb_utils
        self.input_name: str = model_input["name"]
        self.output_names: list[str] = [output["name"] for output in config["output"]]
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        # per_run: Triton's dynamic batcher already bounds a batch by max_batch_size.
        self.network = OnnxNetwork(onnx_session(path, intra_op_threads(config)), per_run=1 << 30)

    def execute(self, requests: Sequence[Any]) -> list[Any]:
        pb = self.pb_utils
        batches = [read_input(pb, request, self.input_name) for request in requests]
        return [
            pb.InferenceResponse(output_tensors=[
                pb.Tensor(name, output)
                for name, output in zip(self.output_names, outputs, strict=True)])
            for outputs in self.network.run_grouped(self.input_name, self.output_names, batches)
        ]


def fused_network(args: dict[str, str], step: str) -> OnnxNetwork:
    """A fused model's network: the step's model.onnx beside it in the repository, threads and
    images per run from the fused model's own config."""
    config = json.loads(args["model_config"])
    path = Path(args["model_repository"]).parent / step / "1" / "model.onnx"
    return OnnxNetwork(onnx_session(path, intra_op_threads(config)), images_per_run(config))


class FusedModel(ABC):
    """The base of a fused model's TritonPythonModel (the CPU configuration's yolox_nano and
    mobilenet_v2: decode, network and post-processing in one step). A subclass names its
    network step and label file and defines read_options, run and respond (execute_fused)."""

    pb_utils: ModuleType
    network_step: str
    labels_file: str  # relative to the model repository
    num_classes: int

    def initialize(self, args: dict[str, str]) -> None:
        self.network = fused_network(args, self.network_step)
        repository = Path(args["model_repository"]).parent
        self.labels = read_labels(repository / self.labels_file, self.num_classes)

    def execute(self, requests: Sequence[Any]) -> list[Any]:
        return execute_fused(requests, self.pb_utils, self.read_options, self.run, self.respond)

    @abstractmethod
    def read_options(self, request: Any) -> Any:
        """The request's options; ValueError when one is out of range."""

    @abstractmethod
    def run(self, images: npt.NDArray[np.object_]) -> Any:
        """The outputs of every accepted image, rows in the order of `images`."""

    @abstractmethod
    def respond(self, outputs: Any, rows: slice, options: Any) -> Any:
        """One request's response from its rows of the outputs."""


def execute_fused(requests: Sequence[Any], pb_utils: ModuleType,
                  read_options: Callable[[Any], Any],
                  run: Callable[[npt.NDArray[np.object_]], Any],
                  respond: Callable[[Any, slice, Any], Any]) -> list[Any]:
    """A fused model's execute: each request's options read (a ValueError answers that request
    alone with INVALID_ARG), the images of every accepted request in one `run`, and each
    request answered by `respond(run's outputs, its rows, its options)`."""
    responses: list[Any] = [None] * len(requests)
    accepted: list[tuple[int, npt.NDArray[np.object_], Any]] = []
    for index, request in enumerate(requests):
        try:
            options = read_options(request)
        except ValueError as err:
            responses[index] = invalid_argument(pb_utils, str(err))
            continue
        accepted.append((index, read_input(pb_utils, request, "IMAGE").reshape(-1), options))
    if not accepted:
        return responses
    outputs = run(np.concatenate([images for _, images, _ in accepted]))
    row = 0
    for index, images, options in accepted:
        responses[index] = respond(outputs, slice(row, row + len(images)), options)
        row += len(images)
    return responses
