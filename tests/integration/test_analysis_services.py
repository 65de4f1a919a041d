"""Embedding, faces, OCR, analysis and the model catalogue through the real server and the real
local Triton, on real photos, checked against in-process references of the same model files."""

from __future__ import annotations

import asyncio

import grpc
import numpy as np
import pytest
from google.rpc import code_pb2

from tests import reference_faces, reference_mobilenet, reference_ocr
from tests.images import corrupt_png, decode, photo
from tests.integration.status_details import reason, status_of, violations
from tests.integration.test_triton_embedding import chelsea_smaller_jpeg
from vision.v1 import (
    analysis_pb2,
    detection_pb2,
    embedding_pb2,
    embedding_service_pb2,
    embedding_service_pb2_grpc,
    face_pb2,
    image_pb2,
    model_pb2,
    model_service_pb2,
    ocr_pb2,
)
from vision_client import AnalysisImage, VisionClient

PHOTOS = ["astronaut.png", "biden.jpg", "chelsea.png", "coffee.png", "motorcycle_left.png",
          "obama.jpg", "obama2.jpg", "obama3.jpg", "page.png", "sample1.jpg", "sample4.jpg",
          "sample5.jpg", "synthetic_text.png"]
CORRUPT = corrupt_png()  # passes every header check; its pixels do not decode


def vector(values: object) -> np.ndarray:
    array = np.asarray(values, dtype=np.float32)
    return array


async def test_embedding_classes_and_near_duplicates(client: VisionClient) -> None:
    chelsea, coffee = await asyncio.gather(client.embed(photo("chelsea.png")),
                                           client.embed(photo("coffee.png")))
    assert 281 <= chelsea.classifications[0].class_id <= 285, chelsea.classifications
    assert coffee.classifications[0].class_id in (967, 968), coffee.classifications
    assert len(chelsea.classifications) == 5 and chelsea.model.name == "mobilenet_v2"
    assert len(chelsea.embedding.values) == 1280
    assert np.linalg.norm(vector(chelsea.embedding.values)) == pytest.approx(1.0, abs=1e-4)
    reference = reference_mobilenet.embed(decode("chelsea.png"))
    assert float(vector(chelsea.embedding.values) @ reference.embedding) >= 0.999
    assert [c.class_id for c in chelsea.classifications] == reference.class_ids
    query = vector((await client.embed(chelsea_smaller_jpeg())).embedding.values)
    others = await asyncio.gather(*(client.embed(photo(name)) for name in PHOTOS))
    cosines = {name: float(query @ vector(r.embedding.values))
               for name, r in zip(PHOTOS, others, strict=True)}
    assert cosines["chelsea.png"] >= 0.9
    assert max(cosines, key=lambda name: cosines[name]) == "chelsea.png", cosines


@pytest.mark.parametrize(("name", "count"), [
    ("sample1.jpg", 3), ("sample4.jpg", 4), ("sample5.jpg", 5), ("astronaut.png", 1),
    ("obama.jpg", 1), ("chelsea.png", 0), ("coffee.png", 0)])
async def test_face_counts_match_the_reference(client: VisionClient, name: str,
                                               count: int) -> None:
    response = await client.detect_faces(photo(name))
    assert len(response.faces) == count
    expected = reference_faces.faces(decode(name))
    assert len(expected) == count
    for got, want in zip(response.faces, expected, strict=True):
        box = (got.box.x_min, got.box.y_min, got.box.x_max, got.box.y_max)
        assert max(abs(a - b) for a, b in zip(box, want.box, strict=True)) <= 1.0
        assert len(got.landmarks) == 5
        assert not got.HasField("embedding")


async def test_face_identity_embeddings(client: VisionClient) -> None:
    options = face_pb2.FaceOptions(include_embeddings=True)
    names = ["obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg", "astronaut.png"]
    responses = await asyncio.gather(*(client.detect_faces(photo(n), options) for n in names))
    faces = {n: vector(r.faces[0].embedding.values) for n, r in zip(names, responses, strict=True)}
    assert all(len(v) == 128 for v in faces.values())
    for a, b in (("obama.jpg", "obama2.jpg"), ("obama.jpg", "obama3.jpg"),
                 ("obama2.jpg", "obama3.jpg")):
        assert float(faces[a] @ faces[b]) >= 0.6, (a, b)
    for other in ("biden.jpg", "astronaut.png"):
        assert float(faces["obama.jpg"] @ faces[other]) <= 0.3, other
    reference = reference_faces.faces(decode("obama.jpg"))[0].embedding
    assert float(faces["obama.jpg"] @ reference) >= 0.999


async def test_ocr_reads_the_test_pages_as_the_reference_does(client: VisionClient) -> None:
    # One at a time: lines of images that share a Triton batch share recogniser calls, which
    # may read a faint line differently (model_repository/ppocr_v6).
    page = await client.extract_text(photo("page.png"))
    invoice = await client.extract_text(photo("synthetic_text.png"))
    assert "Region-based segmentation" in page.text
    assert "Invoice #A-1234" in invoice.text and "56.78" in invoice.text
    for response, name in ((page, "page.png"), (invoice, "synthetic_text.png")):
        expected = reference_ocr.read_photo(name)
        assert len(response.lines) == len(expected)
        for got, want in zip(response.lines, expected, strict=True):
            if want.confidence >= 0.9:
                assert got.text == want.text
        assert response.text == "\n".join(line.text for line in response.lines)
        assert all(len(line.polygon) == 4 for line in response.lines)


async def test_models_are_listed_from_triton_with_their_state(client: VisionClient) -> None:
    models = {m.name: m for m in await client.list_models()}
    assert set(models) == {"yolox_nano", "mobilenet_v2", "yunet_mobilefacenet", "ppocr_v6"}
    assert all(m.ready and m.default_for_task for m in models.values())
    assert models["mobilenet_v2"].output_dimension == 1280
    assert models["yunet_mobilefacenet"].task == model_service_pb2.TASK_FACES
    assert [v.version for v in models["yolox_nano"].versions] == ["1"]
    assert (await client.get_model("ppocr_v6", "1")).task == model_service_pb2.TASK_OCR
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.get_model("ppocr_v6", "9")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert violations(status_of(caught.value)) == ["version"]


async def test_pinned_unknown_version_on_an_rpc_is_not_found(client: VisionClient) -> None:
    options = embedding_pb2.EmbeddingOptions(
        model=model_pb2.ModelReference(name="mobilenet_v2", version="9"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.embed(photo("chelsea.png"), options)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert violations(status_of(caught.value)) == ["options.model.version"]


ALL = analysis_pb2.AnalysisOptions(
    objects=detection_pb2.DetectionOptions(), embedding=embedding_pb2.EmbeddingOptions(),
    faces=face_pb2.FaceOptions(include_embeddings=True), text=ocr_pb2.OcrOptions())


async def test_one_analysis_stream_runs_four_analyses_per_image(client: VisionClient) -> None:
    names = ["astronaut.png", "synthetic_text.png", "sample1.jpg"]
    images = [AnalysisImage(n, photo(n), ALL) for n in names]
    images.insert(1, AnalysisImage("corrupt", CORRUPT, ALL))
    results = {r.request_id: r async for r in client.stream_analyze(images)}
    assert sorted(results) == sorted([*names, "corrupt"])
    bad = results["corrupt"]
    assert bad.status.code == code_pb2.INVALID_ARGUMENT
    assert (reason(bad.status), violations(bad.status)) == ("IMAGE_DECODE_FAILED", ["chunk.data"])
    for name in names:
        analysis = results[name].result
        statuses = [analysis.objects.status.code, analysis.embedding.status.code,
                    analysis.faces.status.code, analysis.text.status.code]
        assert results[name].status.code == 0 and statuses == [0, 0, 0, 0], name
    astronaut = results["astronaut.png"].result
    assert astronaut.objects.detections[0].label == "person"
    assert len(astronaut.faces.faces) == 1 and len(astronaut.faces.faces[0].embedding.values)
    assert "Invoice #A-1234" in results["synthetic_text.png"].result.text.text
    assert len(results["sample1.jpg"].result.faces.faces) == 3
    assert (astronaut.image_size.width, astronaut.image_size.height) == (512, 512)


async def test_a_failing_analysis_keeps_its_own_status(client: VisionClient) -> None:
    options = analysis_pb2.AnalysisOptions()
    options.CopyFrom(ALL)
    options.text.model.version = "9"
    response = await client.analyze(photo("chelsea.png"), options)
    analysis = response.analysis
    assert analysis.text.status.code == code_pb2.NOT_FOUND
    assert violations(analysis.text.status) == ["options.text.model.version"]
    assert analysis.objects.detections[0].label == "cat"
    assert analysis.embedding.status.code == 0 and analysis.faces.status.code == 0


@pytest.mark.parametrize(("content", "options", "code", "why", "fields"), [
    (b"", analysis_pb2.AnalysisOptions(objects=detection_pb2.DetectionOptions()),
     grpc.StatusCode.INVALID_ARGUMENT, "EMPTY_IMAGE", ["image.content"]),
    (photo("chelsea.png"), analysis_pb2.AnalysisOptions(), grpc.StatusCode.INVALID_ARGUMENT,
     "INVALID_OPTION", ["options"]),
    (photo("chelsea.png"), analysis_pb2.AnalysisOptions(
        faces=face_pb2.FaceOptions(score_threshold=2.0),
        embedding=embedding_pb2.EmbeddingOptions(max_classifications=-1)),
     grpc.StatusCode.INVALID_ARGUMENT, "INVALID_OPTION",
     ["options.embedding.max_classifications", "options.faces.score_threshold"]),
    (CORRUPT, ALL, grpc.StatusCode.INVALID_ARGUMENT, "IMAGE_DECODE_FAILED", ["image.content"]),
])
async def test_bad_analysis_requests(client: VisionClient, content: bytes,
                                     options: analysis_pb2.AnalysisOptions,
                                     code: grpc.StatusCode, why: str, fields: list[str]) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.analyze(content, options)
    assert caught.value.code() == code
    assert (reason(status_of(caught.value)), violations(status_of(caught.value))) == (why, fields)


async def test_bad_input_to_each_task_rpc(client: VisionClient, target: str) -> None:
    calls = [
        (client.embed(b""), "EMPTY_IMAGE", ["image.content"]),
        (client.embed(CORRUPT), "IMAGE_DECODE_FAILED", ["image.content"]),
        (client.detect_faces(b"GIF89a" + bytes(64)), "UNSUPPORTED_IMAGE_FORMAT",
         ["image.content"]),
        (client.detect_faces(photo("obama.jpg"), face_pb2.FaceOptions(max_faces=5000)),
         "INVALID_OPTION", ["options.max_faces"]),
        (client.extract_text(photo("obama.jpg")[:3000]), "IMAGE_TRUNCATED", ["image.content"]),
        (client.extract_text(photo("page.png"), ocr_pb2.OcrOptions(
            model=model_pb2.ModelReference(name="tesseract"))), "MODEL_NOT_FOUND",
         ["options.model.name"]),
    ]
    for call, why, fields in calls:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert (reason(status_of(caught.value)), violations(status_of(caught.value))) == (
            why, fields)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = embedding_service_pb2_grpc.EmbeddingServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.EmbedText(embedding_service_pb2.EmbedTextRequest(text="a cat"))
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert reason(status_of(caught.value)) == "TEXT_EMBEDDING_UNAVAILABLE"
    assert (await client.embed(photo("chelsea.png"))).classifications[0].class_id == 285


def test_image_message_keeps_its_bytes_in_a_oneof() -> None:
    assert image_pb2.Image(content=b"x").WhichOneof("source") == "content"
