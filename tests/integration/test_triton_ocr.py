"""The ppocr_v6 OCR model in the real local Triton: photos read as RapidOCR reads them in-process,
a corrupt image answered with IMAGE_STATUS 1 and no lines, several images in one request, and
concurrent requests batched (read from Triton's own statistics)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import cv2
import numpy as np
import pytest
from tritonclient.grpc.aio import InferenceServerClient, InferInput

from tests import reference_ocr
from tests.images import decode, photo
from tests.integration.triton_statistics import counted_since, counts

pytestmark = pytest.mark.triton

MODEL = "ppocr_v6"
CORRUPT = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


@dataclass(frozen=True)
class Reading:
    texts: list[str]
    confidences: list[float]
    polygons: np.ndarray  # [k, 8]
    size: tuple[int, int]
    status: int


async def read_images(url: str, *images: bytes) -> list[Reading]:
    """One request carrying the images; each image's lines without the padding rows."""
    image_input = InferInput("IMAGE", [len(images), 1], "BYTES")
    image_input.set_data_from_numpy(np.array([[image] for image in images], dtype=np.object_))
    async with InferenceServerClient(url) as triton:
        result = await triton.infer(MODEL, [image_input], client_timeout=120)
    texts, confidences = result.as_numpy("TEXTS"), result.as_numpy("CONFIDENCES")
    polygons, sizes = result.as_numpy("POLYGONS"), result.as_numpy("IMAGE_SIZE")
    statuses = result.as_numpy("IMAGE_STATUS")
    assert texts is not None and confidences is not None and polygons is not None
    assert sizes is not None and statuses is not None
    readings = []
    for row in range(len(images)):
        lines = [i for i, text in enumerate(texts[row]) if text]
        readings.append(
            Reading(
                texts=[texts[row, i].decode() for i in lines],
                confidences=[float(confidences[row, i]) for i in lines],
                polygons=polygons[row, lines],
                size=(int(sizes[row, 0]), int(sizes[row, 1])),
                status=int(statuses[row, 0]),
            )
        )
    return readings


async def read_photo(url: str, name: str) -> Reading:
    (reading,) = await read_images(url, photo(name))
    return reading


def assert_matches_reference(reading: Reading, name: str) -> None:
    reference = reference_ocr.read_photo(name)
    assert reading.texts == [line.text for line in reference]
    np.testing.assert_allclose(
        reading.polygons, [line.polygon for line in reference], atol=2.0, err_msg=name
    )
    np.testing.assert_allclose(
        reading.confidences, [line.confidence for line in reference], atol=0.02, err_msg=name
    )


async def test_page_reads_like_rapidocr(triton_url: str) -> None:
    reading = await read_photo(triton_url, "page.png")
    assert reading.status == 0 and reading.size == (191, 384)
    assert reading.texts[0] == "Region-based segmentation"
    assert len(reading.texts) == 7
    assert_matches_reference(reading, "page.png")


async def test_synthetic_text_reads_like_rapidocr(triton_url: str) -> None:
    reading = await read_photo(triton_url, "synthetic_text.png")
    assert reading.status == 0 and reading.size == (200, 640)
    assert any("Invoice #A-1234" in text for text in reading.texts)
    assert any("56.78" in text for text in reading.texts)
    assert min(reading.confidences) > 0.95
    assert_matches_reference(reading, "synthetic_text.png")


async def test_a_photo_without_text_has_no_lines(triton_url: str) -> None:
    reading = await read_photo(triton_url, "astronaut.png")
    assert reading.status == 0 and reading.size == (512, 512)
    assert reading.texts == [] and reading.polygons.shape == (0, 8)
    assert reference_ocr.read_photo("astronaut.png") == ()


async def test_a_corrupt_image_has_status_1_and_no_lines(triton_url: str) -> None:
    (reading,) = await read_images(triton_url, CORRUPT)
    assert reading.status == 1 and reading.size == (0, 0)
    assert reading.texts == [] and reading.polygons.shape == (0, 8)


def confident_reference_texts(name: str) -> list[str]:
    return [line.text for line in reference_ocr.read_photo(name) if line.confidence >= 0.9]


def is_subsequence(needles: list[str], haystack: list[str]) -> bool:
    remaining = iter(haystack)
    return all(needle in remaining for needle in needles)


async def test_several_images_in_one_request_each_get_their_own_lines(triton_url: str) -> None:
    page, corrupt, text = await read_images(
        triton_url, photo("page.png"), CORRUPT, photo("synthetic_text.png")
    )
    assert [page.status, corrupt.status, text.status] == [0, 1, 0]
    assert corrupt.texts == []
    assert text.texts == [line.text for line in reference_ocr.read_photo("synthetic_text.png")]
    # The lines of both photos share recogniser calls, so a line is zero-padded to the width of
    # its call's widest line, which may come from the other photo. That padding shifts the
    # reading of faint lines (page.png's fifth line, read at 0.58); confident lines are stable.
    assert len(page.texts) == 7
    assert is_subsequence(confident_reference_texts("page.png"), page.texts)


async def test_the_model_declares_its_task(triton_url: str) -> None:
    async with InferenceServerClient(triton_url) as triton:
        config = (await triton.get_model_config(MODEL, as_json=True))["config"]
    assert config["parameters"]["task"]["string_value"] == "ocr"
    assert config["parameters"]["det_max_side_len"]["string_value"] == "1024"
    assert config["max_batch_size"] == 32
    outputs = {output["name"]: output["data_type"] for output in config["output"]}
    assert outputs == {
        "TEXTS": "TYPE_STRING",
        "CONFIDENCES": "TYPE_FP32",
        "POLYGONS": "TYPE_FP32",
        "IMAGE_SIZE": "TYPE_INT32",
        "IMAGE_STATUS": "TYPE_INT32",
    }


async def test_concurrent_requests_are_batched(triton_url: str) -> None:
    # On the CPU configuration the BLS model runs its network steps in its own process
    # (configs/cpu.pbtxt, steps_in_process): its own executions are where batching shows.
    steps = (MODEL,)
    image = photo("synthetic_text.png")
    before = {step: await counts(triton_url, step) for step in steps}
    readings = await asyncio.gather(*(read_images(triton_url, image) for _ in range(8)))
    deltas = await counted_since(triton_url, before, 8)
    expected = [line.text for line in reference_ocr.read_photo("synthetic_text.png")]
    assert all(reading.texts == expected for (reading,) in readings)
    for step in steps:
        inferences, executions = deltas[step]
        # Requests of other tests may still be finishing in Triton (e.g. a killed server's).
        assert inferences >= 8, step
        assert executions < inferences, f"{step}: {inferences} inferences in {executions} runs"


async def test_a_large_photo_is_read_through_the_smaller_detector_input(triton_url: str) -> None:
    # 4032 x 1260: bounded to 2000 wide, then detected at 1024 wide (det_max_side_len); the
    # lines are still cut from the bounded image and mapped back to the photo's own pixels.
    large = cv2.resize(decode("synthetic_text.png"), (4032, 1260), interpolation=cv2.INTER_CUBIC)
    ok, encoded = cv2.imencode(".png", large)
    assert ok
    (reading,) = await read_images(triton_url, encoded.tobytes())
    assert reading.status == 0 and reading.size == (1260, 4032)
    reference = [line.text for line in reference_ocr.read_photo("synthetic_text.png")]
    assert reading.texts == reference
    assert reading.polygons[:, 0::2].max() > 2000  # x in the photo's pixels, not the detector's
