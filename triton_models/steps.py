"""Network steps: the one onnxruntime setup every network runs under, and the two ways an
entry model calls a step, through Triton (BLS) or in its own process, as an object handed in.

On the CPU configuration (configs/cpu.pbtxt, parameter `steps_in_process`) an entry model runs
its networks' ONNX files itself: no stub round trip and no image-sized tensor copied through
shared memory per step. On GPU it calls the step models, which Triton's native onnxruntime
backend serves there.

The networks run at most `images_per_run` images per onnxruntime call (config parameter, default
IMAGES_PER_RUN), however large the batch Triton hands over. onnxruntime's CPU arena keeps the
buffers of the largest batch it ever ran until the process ends: batches of up to 32 images left
a YOLOX instance ~440 MiB larger for good, two at a time ~15 MiB (one at a time: nothing). On
one intra-op thread no network here ran faster on a whole batch (bench/report/overload.md).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

IMAGES_PER_RUN = 2
DEFAULT_INTRA_OP_THREADS = 2

Arrays = dict[str, npt.NDArray[Any]]


class StepError(RuntimeError):
    """A network step answered with an error."""


def parameter(model_config: dict[str, Any], name: str, default: str) -> str:
    """A string parameter of the model config, else the default."""
    found = model_config.get("parameters", {}).get(name)
    return default if found is None else str(found["string_value"])


def intra_op_threads(model_config: dict[str, Any]) -> int:
    return int(parameter(model_config, "intra_op_threads", str(DEFAULT_INTRA_OP_THREADS)))


def images_per_run(model_config: dict[str, Any]) -> int:
    return max(1, int(parameter(model_config, "images_per_run", str(IMAGES_PER_RUN))))


def onnx_session(path: Path, intra_op_threads: int) -> Any:
    """The one onnxruntime setup of every network here: CPU provider, inter-op 1 (Triton
    serialises calls to an instance, so more inter-op threads would only contend) and no
    spinning (idle threads would burn a core the other processes of a CPU box need; bench/
    REPORT.md, CPU path: intra_op 2 cost twice the CPU per image)."""
    # Imported here: the GPU image's Python has no onnxruntime (Triton's own backend runs the
    # networks there), and the models that only decode or post-process never call this.
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=options,
                                providers=["CPUExecutionProvider"])


class OnnxNetwork:
    """An onnxruntime session run `per_run` images at a time and answered as one call on the
    whole batch would be: each output concatenated along the batch axis."""

    def __init__(self, session: Any, per_run: int = IMAGES_PER_RUN) -> None:
        self.session = session
        self.per_run = per_run

    def run(self, output_names: Sequence[str], feeds: Mapping[str, npt.NDArray[Any]]
            ) -> list[npt.NDArray[Any]]:
        count = len(next(iter(feeds.values())))
        parts = [self.session.run(list(output_names),
                                  {name: value[start : start + self.per_run]
                                   for name, value in feeds.items()})
                 for start in range(0, count, self.per_run)]
        return [np.concatenate([np.asarray(part[index]) for part in parts])
                for index in range(len(output_names))]

    def run_grouped(self, input_name: str, output_names: Sequence[str],
                    batches: Sequence[npt.NDArray[Any]]) -> list[list[npt.NDArray[Any]]]:
        """Several requests' inputs, those of one shape in one run (YuNet and the OCR networks
        take any image size); per request, its part of each output, in output_names' order."""
        groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for index, batch in enumerate(batches):
            groups[batch.shape[1:]].append(index)
        results: list[list[npt.NDArray[Any]]] = [[] for _ in batches]
        for members in groups.values():
            outputs = self.run(output_names,
                               {input_name: np.concatenate([batches[i] for i in members])})
            bounds = np.cumsum([len(batches[i]) for i in members])[:-1]
            for output in outputs:
                for index, part in zip(members, np.split(output, bounds), strict=True):
                    results[index].append(part)
        return results


class Steps(Protocol):
    """How an entry model runs a network step: inputs and outputs by tensor name."""

    def run(self, step: str, inputs: Arrays, outputs: Sequence[str]) -> Arrays: ...


class InProcessSteps:
    """Each step's model_repository/<step>/1/model.onnx run here; a session per step, made at
    its first call."""

    def __init__(self, repository: Path, intra_op_threads: int,
                 per_run: int = IMAGES_PER_RUN) -> None:
        self._repository = repository
        self._threads = intra_op_threads
        self._per_run = per_run
        self._networks: dict[str, OnnxNetwork] = {}

    def run(self, step: str, inputs: Arrays, outputs: Sequence[str]) -> Arrays:
        network = self._networks.get(step)
        if network is None:
            session = onnx_session(self._repository / step / "1" / "model.onnx", self._threads)
            network = self._networks[step] = OnnxNetwork(session, self._per_run)
        return dict(zip(outputs, network.run(outputs, inputs), strict=True))


class TritonSteps:
    """Each step called through Triton (a synchronous BLS request); `pb_utils` is the backend's
    module, which only a stub can import."""

    def __init__(self, pb_utils: ModuleType) -> None:
        self._pb = pb_utils

    def run(self, step: str, inputs: Arrays, outputs: Sequence[str]) -> Arrays:
        pb = self._pb
        request = pb.InferenceRequest(
            model_name=step,
            inputs=[pb.Tensor(name, array) for name, array in inputs.items()],
            requested_output_names=list(outputs),
            # On GPU the outputs could stay in device memory; the numpy work needs them here.
            preferred_memory=pb.PreferredMemory(pb.TRITONSERVER_MEMORY_CPU, 0),
        )
        response = request.exec()
        if response.has_error():
            raise StepError(f"{step}: {response.error().message()}")
        return {name: np.asarray(pb.get_output_tensor_by_name(response, name).as_numpy())
                for name in outputs}


def steps_for(args: dict[str, str], model_config: dict[str, Any],
              pb_utils: ModuleType) -> Steps:
    """InProcessSteps when the config's `steps_in_process` parameter is "true" (the CPU
    configurations), else TritonSteps; `args` are those Triton passes to initialize."""
    if parameter(model_config, "steps_in_process", "false") != "true":
        return TritonSteps(pb_utils)
    repository = Path(args["model_repository"]).parent
    return InProcessSteps(repository, intra_op_threads(model_config),
                          images_per_run(model_config))
