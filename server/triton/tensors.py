"""Tensor contracts: what an adapter sends and expects, checked against Triton's own model
metadata at start-up, and the per-image decode status every model of model_repository/ returns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# Every top-level model takes the still-encoded image and reports per image whether its decode
# step could read it (model_repository/*/config.pbtxt): a code, not words in an error message.
IMAGE = "IMAGE"
IMAGE_STATUS = "IMAGE_STATUS"
IMAGE_SIZE = "IMAGE_SIZE"
STATUS_OK = 0
STATUS_UNDECODABLE = 1
STATUS_TOO_COMPLEX = 2  # refused before decoding: more JPEG scans than the decode budget allows


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One input or output: Triton's datatype name and its dims without the batch dimension."""

    name: str
    datatype: str
    dims: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ModelTensors:
    """The tensors an adapter relies on; a model may have more outputs, never fewer."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.outputs)

    def mismatches(self, metadata: Mapping[str, Any]) -> list[str]:
        """What differs between this contract and Triton's metadata of a batching model
        (`get_model_metadata(..., as_json=True)`); empty when they agree."""
        problems = _compare("input", self.inputs, metadata.get("inputs", ()))
        problems += _compare("output", self.outputs, metadata.get("outputs", ()))
        served = {entry["name"] for entry in metadata.get("inputs", ())}
        problems += [f"input {name!r} is not one the adapter sends"
                     for name in sorted(served - {spec.name for spec in self.inputs})]
        return problems


def _compare(kind: str, wanted: Sequence[TensorSpec], served: Sequence[Mapping[str, Any]]
             ) -> list[str]:
    by_name = {entry["name"]: entry for entry in served}
    problems = []
    for spec in wanted:
        entry = by_name.get(spec.name)
        if entry is None:
            problems.append(f"{kind} {spec.name!r} is missing")
            continue
        # Batching models report the batch dimension first as -1; the contract leaves it out.
        dims = tuple(int(d) for d in entry.get("shape", ()))[1:]
        if entry.get("datatype") != spec.datatype or dims != spec.dims:
            problems.append(
                f"{kind} {spec.name!r} is {entry.get('datatype')} {list(dims)}, "
                f"the adapter expects {spec.datatype} {list(spec.dims)}")
    return problems
