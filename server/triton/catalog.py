"""The model catalogue as Triton knows it: the repository index (models, versions, states) and
each model's configuration, whose `task` and `output_dimension` parameters say what it serves
(model_repository/*/config.pbtxt). Models without a task are internal steps of an ensemble."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from server.domain import ModelInfo, ModelVersion, Task
from server.triton.calls import TritonCalls

TASK_PARAMETER = "task"
DIMENSION_PARAMETER = "output_dimension"


class TritonCatalog:
    def __init__(self, calls: TritonCalls, timeout_s: float) -> None:
        self._calls = calls
        self._timeout_s = timeout_s

    async def models(self) -> list[ModelInfo]:
        versions: dict[str, list[ModelVersion]] = defaultdict(list)
        for entry in await self._calls.repository_index(self._timeout_s):
            name, version = entry.get("name", ""), entry.get("version", "")
            if name and version:
                versions[name].append(ModelVersion(version, entry.get("state") == "READY"))
        found = []
        for name in sorted(versions):
            config = await self._calls.model_config(name, self._timeout_s)
            info = _model_info(name, versions[name], config) if config else None
            if info is not None:
                found.append(info)
        return found


def _model_info(name: str, versions: list[ModelVersion], config: dict[str, Any]
                ) -> ModelInfo | None:
    parameters = config.get("parameters", {})
    task_name = parameters.get(TASK_PARAMETER, {}).get("string_value", "")
    try:
        task = Task(task_name)
    except ValueError:
        return None
    dimension = parameters.get(DIMENSION_PARAMETER, {}).get("string_value", "0")
    return ModelInfo(
        name=name,
        task=task,
        versions=tuple(sorted(versions, key=lambda v: int(v.version), reverse=True)),
        output_dimension=int(dimension) if dimension.isdigit() else 0,
        platform=config.get("platform") or config.get("backend", ""),
    )
