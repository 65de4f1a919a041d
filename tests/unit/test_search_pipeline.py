"""Search and ingest logic without Triton: reciprocal-rank fusion, record building (labels,
nothing partial), and query validation."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from server.domain import (
    Box,
    Classification,
    Detection,
    DetectionResult,
    EmbeddingResult,
    Face,
    FacesResult,
    Input,
    InvalidArgumentError,
    ModelRef,
    OcrResult,
    Point,
    TextLine,
)
from server.pipeline.analysis import AnalysisResult, Outcome
from server.pipeline.detection import OBJECTS
from server.pipeline.embedding import EMBEDDING
from server.pipeline.faces import FACES
from server.pipeline.ingest import IngestInput, check_ingest, to_record
from server.pipeline.ocr import TEXT
from server.pipeline.search import fuse
from server.store.base import IndexKind, MatchKind, TextHit, TextMatch

M = ModelRef("m")


def hits(*image_ids: str) -> tuple[TextHit, ...]:
    return tuple(TextHit(i, 1.0, (TextMatch(MatchKind.LABEL, 0, i),)) for i in image_ids)


def test_rrf_rewards_images_found_by_several_indexes_and_breaks_ties_by_id() -> None:
    fused = fuse({IndexKind.IMAGES: hits("a", "b", "c"), IndexKind.OCR: hits("c", "d")})
    assert [h.image_id for h in fused] == ["c", "a", "b", "d"]
    assert fused[0].indexes == (IndexKind.OCR, IndexKind.IMAGES)
    assert fused[0].score == pytest.approx(1 / 61 + 1 / 63)
    assert [h.image_id for h in fuse({IndexKind.OCR: hits("z", "y")} | {
        IndexKind.OBJECTS: hits("y", "z")})] == ["y", "z"]


def analysis(faces_error: Exception | None = None) -> AnalysisResult:
    line = TextLine("Total 5", 0.9, (Point(0, 0), Point(4, 0), Point(4, 2), Point(0, 2)))
    face = Face(Box(1, 1, 3, 3), 0.9, (Point(0, 0),) * 5, (0.0, 1.0))
    return AnalysisResult(
        10, 20,
        (OBJECTS, Outcome(DetectionResult((Detection("cup", 41, 0.8, Box(0, 0, 5, 5)),), 10, 20,
                                          M))),
        (EMBEDDING, Outcome(EmbeddingResult((1.0, 0.0), (Classification("espresso", 967, 0.9),
                                                         Classification("cup", 968, 0.05),
                                                         Classification("plate", 923, 0.02)),
                                            10, 20, M))),
        (FACES, Outcome(error=faces_error) if faces_error
         else Outcome(FacesResult((face,), 10, 20, M))),
        (TEXT, Outcome(OcrResult((line,), 10, 20, M))),
    )


def test_a_record_holds_every_index_and_the_best_score_of_each_label() -> None:
    record = to_record("t", IngestInput("id", {"k": "v"}), analysis(), datetime.now(UTC))
    assert [(label.name, label.score) for label in record.labels] == [
        ("espresso", 0.9), ("cup", 0.8)]
    assert (len(record.objects), len(record.faces), record.ocr_text) == (1, 1, "Total 5")
    assert (record.width, record.height) == (10, 20)


def test_a_failed_analysis_stores_nothing() -> None:
    broken = InvalidArgumentError.one("X", Input.IMAGE, "", "bad")
    with pytest.raises(InvalidArgumentError):
        to_record("t", IngestInput("id", {}), analysis(broken), datetime.now(UTC))


@pytest.mark.parametrize(("given", "paths"), [
    (IngestInput("", {}), ["id"]),
    (IngestInput("a\nb", {}), ["id"]),
    (IngestInput("ok", {"": "v", "k": "x" * 1025}), ["metadata['']", "metadata['k']"]),
])
def test_ingest_ids_and_metadata_are_checked(given: IngestInput, paths: list[str]) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        check_ingest(given)
    assert [v.path for v in caught.value.violations] == paths
