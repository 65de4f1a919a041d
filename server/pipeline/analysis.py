"""Several analyses of one image: every requested task's options are checked first (all
violations at once, named under the task's key), the image is checked once, then the analyses
run concurrently and each keeps its own outcome, so one failing analysis never hides the others.

The tasks are not named here: each task's pipeline module declares its AnalysisKey (typed by
the options it takes and the result it gives), and the registry (server/services.py) hands
this pipeline one AnalysisStep per task, so a new task needs no change to this module.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar, cast

from server.domain import (
    FieldViolation,
    ImageLimits,
    Input,
    InvalidArgumentError,
    ModelNotFoundError,
)
from server.images import inspect_image


class ImageResult(Protocol):
    """What every task's result says of the image it analysed."""

    @property
    def width(self) -> int: ...

    @property
    def height(self) -> int: ...


G = TypeVar("G")  # a task's options as given
P = TypeVar("P")  # its options once resolved against the settings
R = TypeVar("R", bound=ImageResult)  # its result
G_contra = TypeVar("G_contra", contravariant=True)
R_co = TypeVar("R_co", bound=ImageResult, covariant=True)


@dataclass(frozen=True, slots=True, eq=False)
class AnalysisKey(Generic[G, R]):
    """One task's place in an analysis: its name (the AnalysisOptions and ImageAnalysis field,
    and the prefix of its options' field paths), typed by its options and its result. Keys
    compare by identity: each task declares its one key in its pipeline module."""

    name: str

    def ask(self, options: G) -> Asked:
        return Asked(self, options)


@dataclass(frozen=True, slots=True)
class Asked:
    """One requested analysis with its options as given (built by AnalysisKey.ask, which
    checks that the options are the key's)."""

    key: AnalysisKey[Any, Any]
    options: object


class AnalysisInput:
    """The analyses asked for, each with its options as given."""

    __slots__ = ("_asked",)

    def __init__(self, *asked: Asked) -> None:
        self._asked = {item.key: item.options for item in asked}

    def options(self, key: AnalysisKey[G, Any]) -> G | None:
        """The options given for `key`'s task; None when that task was not asked for."""
        return cast("G | None", self._asked.get(key))

    def asks(self, key: AnalysisKey[Any, Any]) -> bool:
        return key in self._asked

    def __bool__(self) -> bool:
        return bool(self._asked)


@dataclass(frozen=True, slots=True)
class Outcome(Generic[R]):
    """One analysis: its result, or the error that ended it."""

    result: R | None = None
    error: Exception | None = None


class AnalysisResult:
    """The image's size and the outcome of each analysis that was asked for."""

    __slots__ = ("height", "outcomes", "width")

    def __init__(self, width: int, height: int, *outcomes: tuple[AnalysisKey[Any, Any],
                                                                 Outcome[Any]]) -> None:
        self.width = width
        self.height = height
        self.outcomes = dict(outcomes)

    def outcome(self, key: AnalysisKey[Any, R]) -> Outcome[R] | None:
        """The outcome of `key`'s task; None when that task was not asked for."""
        return cast("Outcome[R] | None", self.outcomes.get(key))


class TaskPipeline(Protocol[G_contra, P, R_co]):
    """What the analysis needs of a task's pipeline (DetectionPipeline and its siblings)."""

    def resolve_options(self, given: G_contra) -> P: ...

    async def run(self, content: bytes, options: P, request_id: str,
                  timeout_s: float | None) -> R_co: ...


Run = Callable[[bytes, str, float | None], Awaitable[ImageResult]]


@dataclass(frozen=True, slots=True)
class AnalysisStep(Generic[G, P, R]):
    """A task inside analyses: its key and its pipeline."""

    key: AnalysisKey[G, R]
    pipeline: TaskPipeline[G, P, R]

    def prepare(self, given: AnalysisInput) -> Run | None:
        """The run of this task with its options resolved; None when it was not asked for.
        Raises the options' violations, paths still relative to the task."""
        options = given.options(self.key)
        if options is None:
            return None
        resolved = self.pipeline.resolve_options(options)

        def run(content: bytes, request_id: str, timeout_s: float | None) -> Awaitable[R]:
            return self.pipeline.run(content, resolved, request_id, timeout_s)
        return run


class AnalysisPipeline:
    def __init__(self, steps: Sequence[AnalysisStep[Any, Any, Any]], limits: ImageLimits) -> None:
        self._steps = tuple(steps)
        self._limits = limits

    async def analyze(self, content: bytes, given: AnalysisInput, request_id: str,
                      timeout_s: float | None) -> AnalysisResult:
        runs = self._prepare(given)
        inspect_image(content, self._limits)
        done = await asyncio.gather(*(run(content, request_id, timeout_s)
                                      for run in runs.values()), return_exceptions=True)
        outcomes: list[tuple[AnalysisKey[Any, Any], Outcome[Any]]] = []
        for key, value in zip(runs, done, strict=True):
            if isinstance(value, BaseException) and not isinstance(value, Exception):
                raise value  # cancellation and the like end the whole call
            outcomes.append((key, Outcome(error=value) if isinstance(value, Exception)
                             else Outcome(result=value)))
        _raise_if_undecodable([outcome for _, outcome in outcomes])
        width, height = next(((o.result.width, o.result.height) for _, o in outcomes
                              if o.result is not None), (0, 0))
        return AnalysisResult(width, height, *outcomes)

    def _prepare(self, given: AnalysisInput) -> dict[AnalysisKey[Any, Any], Run]:
        """Each requested task's run, options resolved; every violation of every task at once."""
        if not given:
            names = [step.key.name for step in self._steps]
            raise InvalidArgumentError.one(
                "INVALID_OPTION", Input.OPTIONS, "",
                f"ask for at least one analysis: {', '.join(names[:-1])} or {names[-1]}")
        runs: dict[AnalysisKey[Any, Any], Run] = {}
        violations: list[FieldViolation] = []
        for step in self._steps:
            key = step.key.name
            try:
                run = step.prepare(given)
            except InvalidArgumentError as exc:
                violations.extend(FieldViolation(v.input, _under(key, v.path), v.description)
                                  for v in exc.violations)
            except ModelNotFoundError as exc:
                raise ModelNotFoundError(exc.model, _under(key, exc.path)) from exc
            else:
                if run is not None:
                    runs[step.key] = run
        if violations:
            raise InvalidArgumentError("INVALID_OPTION", tuple(violations))
        return runs


def _under(key: str, path: str) -> str:
    return f"{key}.{path}" if path else key


def _raise_if_undecodable(outcomes: Sequence[Outcome[Any]]) -> None:
    """An image that no analysis could decode fails as a whole, as it would in a single-task
    call, rather than as N identical per-analysis failures."""
    errors = [o.error for o in outcomes]
    if errors and all(isinstance(e, InvalidArgumentError) and e.reason == "IMAGE_DECODE_FAILED"
                      for e in errors):
        first = errors[0]
        assert first is not None
        raise first
