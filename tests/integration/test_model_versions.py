"""Every response that names a model names the version that answered it, against the real
server and Triton. The expected version is read from the model repository's folders (Triton
serves a model's newest numbered folder), not from the server."""

from __future__ import annotations

from pathlib import Path

from google.protobuf.message import Message

from tests.images import photo
from vision.v1 import analysis_pb2, detection_pb2, embedding_pb2, face_pb2, model_pb2, ocr_pb2
from vision_client import AnalysisImage, StreamImage, VisionClient

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"


def newest_version(name: str) -> str:
    return str(max(int(p.name) for p in (REPOSITORY / name).iterdir() if p.name.isdigit()))


def assert_names_its_version(model: model_pb2.ModelReference) -> None:
    assert model.name
    assert model.version == newest_version(model.name)


def every_analysis() -> analysis_pb2.AnalysisOptions:
    return analysis_pb2.AnalysisOptions(
        objects=detection_pb2.DetectionOptions(), embedding=embedding_pb2.EmbeddingOptions(),
        faces=face_pb2.FaceOptions(), text=ocr_pb2.OcrOptions())


async def test_unary_responses_name_the_version(client: VisionClient) -> None:
    responses: list[Message] = [
        await client.detect(photo("astronaut.png")),
        await client.embed(photo("chelsea.png")),
        await client.detect_faces(photo("astronaut.png")),
        await client.extract_text(photo("synthetic_text.png")),
    ]
    for response in responses:
        assert_names_its_version(response.model)  # type: ignore[attr-defined]
    embedded = await client.embed(photo("chelsea.png"))
    assert_names_its_version(embedded.embedding.model)


async def test_a_pinned_version_is_named_as_pinned(client: VisionClient) -> None:
    response = await client.detect(photo("astronaut.png"), detection_pb2.DetectionOptions(
        model=model_pb2.ModelReference(name="yolox_nano", version="1")))
    assert (response.model.name, response.model.version) == ("yolox_nano", "1")


async def test_analyses_and_streams_name_the_version(client: VisionClient) -> None:
    analysis = (await client.analyze(photo("astronaut.png"), every_analysis())).analysis
    for model in (analysis.objects.model, analysis.embedding.embedding.model,
                  analysis.faces.model, analysis.text.model):
        assert_names_its_version(model)
    async for streamed in client.stream_analyze(
            [AnalysisImage("a", photo("chelsea.png"), every_analysis())]):
        assert_names_its_version(streamed.result.objects.model)
        assert_names_its_version(streamed.result.text.model)
    async for result in client.detect_many([StreamImage("a", photo("chelsea.png"))]):
        assert_names_its_version(result.result.model)
