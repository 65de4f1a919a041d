"""The analysis pipeline with fake adapters: options of every task checked at once and named
under their key, the image checked once, analyses run concurrently with their own outcomes, and
an image no analysis can decode failing as a whole."""

from __future__ import annotations

import asyncio

import pytest

from server.domain import (
    Box,
    Classification,
    Detection,
    DetectionResult,
    DetectOptions,
    DetectOptionsInput,
    EmbeddingResult,
    EmbedOptions,
    EmbedOptionsInput,
    Face,
    FaceOptions,
    FaceOptionsInput,
    FacesResult,
    ImageLimits,
    Input,
    InvalidArgumentError,
    ModelNotFoundError,
    ModelRef,
    OcrOptions,
    OcrOptionsInput,
    OcrResult,
    Point,
    TextLine,
)
from server.pipeline.analysis import AnalysisInput, AnalysisPipeline, AnalysisStep
from server.pipeline.detection import OBJECTS, DetectionConfig, DetectionPipeline
from server.pipeline.embedding import EMBEDDING, EmbeddingConfig, EmbeddingPipeline
from server.pipeline.faces import FACES, FacesConfig, FacesPipeline
from server.pipeline.ocr import TEXT, OcrConfig, OcrPipeline
from server.pipeline.options import ModelChoice
from tests.images import photo

LIMITS = ImageLimits(max_bytes=32 << 20, max_pixels=40_000_000)
UNDECODABLE = InvalidArgumentError.one("IMAGE_DECODE_FAILED", Input.IMAGE, "", "undecodable")


class Fakes:
    """One fake per adapter; `fail` makes the named ones raise, `running` counts overlap."""

    def __init__(self, fail: dict[str, Exception] | None = None) -> None:
        self.fail = fail or {}
        self.running = 0
        self.most_at_once = 0

    async def _enter(self, name: str) -> None:
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        await asyncio.sleep(0)
        self.running -= 1
        if name in self.fail:
            raise self.fail[name]

    async def detect(self, content: bytes, options: DetectOptions, request_id: str,
                     timeout_s: float | None) -> DetectionResult:
        await self._enter("objects")
        return DetectionResult((Detection("cat", 15, 0.6, Box(1, 1, 5, 5)),), 451, 300,
                               options.model)

    async def embed(self, content: bytes, options: EmbedOptions, request_id: str,
                    timeout_s: float | None) -> EmbeddingResult:
        await self._enter("embedding")
        return EmbeddingResult((1.0, 0.0), (Classification("Egyptian cat", 285, 0.7),), 451, 300,
                               options.model)

    async def detect_faces(self, content: bytes, options: FaceOptions, request_id: str,
                           timeout_s: float | None) -> FacesResult:
        await self._enter("faces")
        face = Face(Box(0, 0, 2, 2), 0.9, (Point(0, 0),) * 5, None)
        return FacesResult((face,), 451, 300, options.model)

    async def read_text(self, content: bytes, options: OcrOptions, request_id: str,
                        timeout_s: float | None) -> OcrResult:
        await self._enter("text")
        line = TextLine("hello", 0.9, (Point(0, 0), Point(4, 0), Point(4, 2), Point(0, 2)))
        return OcrResult((line,), 451, 300, options.model)


def pipeline(fakes: Fakes) -> AnalysisPipeline:
    return AnalysisPipeline([
        AnalysisStep(OBJECTS, DetectionPipeline(fakes, DetectionConfig(
            ModelChoice(frozenset({"det"}), "det"), 0.25, 0.45, 100, LIMITS))),
        AnalysisStep(EMBEDDING, EmbeddingPipeline(fakes, EmbeddingConfig(
            ModelChoice(frozenset({"emb"}), "emb"), 5, LIMITS))),
        AnalysisStep(FACES, FacesPipeline(fakes, FacesConfig(
            ModelChoice(frozenset({"face"}), "face"), 0.6, 100, LIMITS))),
        AnalysisStep(TEXT, OcrPipeline(fakes, OcrConfig(
            ModelChoice(frozenset({"ocr"}), "ocr"), LIMITS))),
    ], LIMITS)


ALL = AnalysisInput(OBJECTS.ask(DetectOptionsInput(ModelRef(""))),
                    EMBEDDING.ask(EmbedOptionsInput(ModelRef(""))),
                    FACES.ask(FaceOptionsInput(ModelRef(""))),
                    TEXT.ask(OcrOptionsInput(ModelRef(""))))


async def test_every_requested_analysis_runs_concurrently_with_its_own_outcome() -> None:
    fakes = Fakes(fail={"faces": ModelNotFoundError(ModelRef("face", "9"), "model.version")})
    result = await pipeline(fakes).analyze(photo("chelsea.png"), ALL, "r", None)
    assert fakes.most_at_once == 4
    assert (result.width, result.height) == (451, 300)
    objects, embedding = result.outcome(OBJECTS), result.outcome(EMBEDDING)
    faces, text = result.outcome(FACES), result.outcome(TEXT)
    assert objects is not None and objects.result is not None
    assert objects.result.detections[0].label == "cat"
    assert embedding is not None and embedding.error is None
    assert text is not None and text.result is not None
    assert faces is not None and isinstance(faces.error, ModelNotFoundError)


async def test_only_requested_analyses_run() -> None:
    result = await pipeline(Fakes()).analyze(
        photo("chelsea.png"), AnalysisInput(TEXT.ask(OcrOptionsInput(ModelRef("")))), "r",
        None)
    assert [result.outcome(key) for key in (OBJECTS, EMBEDDING, FACES)] == [None, None, None]
    text = result.outcome(TEXT)
    assert text is not None and text.result is not None


async def test_options_of_every_task_are_checked_at_once_under_their_key() -> None:
    given = AnalysisInput(OBJECTS.ask(DetectOptionsInput(ModelRef(""), score_threshold=2.0)),
                          FACES.ask(FaceOptionsInput(ModelRef("", "x"), max_faces=-1)))
    with pytest.raises(InvalidArgumentError) as caught:
        await pipeline(Fakes()).analyze(photo("chelsea.png"), given, "r", None)
    assert [(v.input, v.path) for v in caught.value.violations] == [
        (Input.OPTIONS, "objects.score_threshold"), (Input.OPTIONS, "faces.max_faces"),
        (Input.OPTIONS, "faces.model.version")]


async def test_unknown_model_names_its_task() -> None:
    given = AnalysisInput(EMBEDDING.ask(EmbedOptionsInput(ModelRef("clip"))))
    with pytest.raises(ModelNotFoundError) as caught:
        await pipeline(Fakes()).analyze(photo("chelsea.png"), given, "r", None)
    assert caught.value.path == "embedding.model.name"


async def test_nothing_requested_and_bad_images_fail_before_any_inference() -> None:
    fakes = Fakes()
    with pytest.raises(InvalidArgumentError) as caught:
        await pipeline(fakes).analyze(photo("chelsea.png"), AnalysisInput(), "r", None)
    assert caught.value.reason == "INVALID_OPTION"
    with pytest.raises(InvalidArgumentError) as caught:
        await pipeline(fakes).analyze(b"", ALL, "r", None)
    assert caught.value.reason == "EMPTY_IMAGE"
    assert fakes.most_at_once == 0


async def test_an_image_no_analysis_can_decode_fails_as_a_whole() -> None:
    fakes = Fakes(fail={name: UNDECODABLE for name in ("objects", "embedding", "faces", "text")})
    with pytest.raises(InvalidArgumentError) as caught:
        await pipeline(fakes).analyze(photo("chelsea.png"), ALL, "r", None)
    assert caught.value.reason == "IMAGE_DECODE_FAILED"
