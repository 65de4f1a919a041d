"""The mobilenet_v2 ensemble on the real local Triton: ImageNet classes and embeddings of real
photos, checked against an independent in-process onnxruntime run; per-image decode failures;
dynamic batching read from Triton's statistics. Talks to Triton directly (tritonclient)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt
import pytest
import pytest_asyncio
from tritonclient.grpc import InferInput
from tritonclient.grpc.aio import InferenceServerClient
from tritonclient.utils import InferenceServerException

from tests import reference_mobilenet
from tests.images import PHOTOS, decode, photo
from tests.integration.triton_statistics import counted_since, counts

pytestmark = pytest.mark.triton

MODEL = "mobilenet_v2"
PHOTO_NAMES = sorted(path.name for path in PHOTOS.iterdir())


@dataclass(frozen=True)
class Embedded:
    embedding: npt.NDArray[np.float32]
    class_ids: list[int]
    scores: list[float]
    labels: list[str]
    size: list[int]
    status: int


@pytest_asyncio.fixture(loop_scope="session")
async def triton(triton_url: str) -> AsyncIterator[InferenceServerClient]:
    async with InferenceServerClient(triton_url) as client:
        yield client


async def embed_many(
    triton: InferenceServerClient, images: list[bytes], top_ks: list[int]
) -> list[Embedded]:
    """One request carrying these images."""
    image = InferInput("IMAGE", [len(images), 1], "BYTES")
    image.set_data_from_numpy(np.array([[data] for data in images], dtype=np.object_))
    top_k = InferInput("TOP_K", [len(images), 1], "INT32")
    top_k.set_data_from_numpy(np.array(top_ks, dtype=np.int32)[:, None])
    result = await triton.infer(MODEL, [image, top_k])
    out = {
        name: result.as_numpy(name)
        for name in ("EMBEDDING", "CLASS_IDS", "SCORES", "LABELS", "IMAGE_SIZE", "IMAGE_STATUS")
    }
    return [
        Embedded(
            embedding=out["EMBEDDING"][i],
            class_ids=out["CLASS_IDS"][i].tolist(),
            scores=out["SCORES"][i].tolist(),
            labels=[label.decode() for label in out["LABELS"][i]],
            size=out["IMAGE_SIZE"][i].tolist(),
            status=int(out["IMAGE_STATUS"][i, 0]),
        )
        for i in range(len(images))
    ]


async def embed(triton: InferenceServerClient, data: bytes, top_k: int = 5) -> Embedded:
    (result,) = await embed_many(triton, [data], [top_k])
    return result


def chelsea_smaller_jpeg() -> bytes:
    image = decode("chelsea.png")
    height, width = image.shape[:2]
    small = cv2.resize(
        image, (round(width * 0.7), round(height * 0.7)), interpolation=cv2.INTER_AREA
    )
    ok, buffer = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 80])
    assert ok
    return bytes(buffer.tobytes())


async def test_chelsea_is_a_cat_and_coffee_is_espresso(triton: InferenceServerClient) -> None:
    chelsea, coffee = await asyncio.gather(
        embed(triton, photo("chelsea.png")), embed(triton, photo("coffee.png"))
    )
    assert 281 <= chelsea.class_ids[0] <= 285, chelsea.labels
    assert chelsea.labels[0] == "Egyptian cat"
    assert coffee.class_ids[0] in (967, 968), coffee.labels
    assert coffee.labels[0] == "espresso" and coffee.scores[0] > 0.9
    for result in (chelsea, coffee):
        assert result.status == 0 and len(result.class_ids) == 5
        assert result.scores == sorted(result.scores, reverse=True)
        assert float(np.linalg.norm(result.embedding)) == pytest.approx(1.0, abs=1e-5)
    assert chelsea.size == [300, 451] and coffee.size == [400, 600]


@pytest.mark.parametrize("name", ["chelsea.png", "coffee.png", "obama3.jpg", "sample4.jpg"])
async def test_photos_match_in_process_reference(triton: InferenceServerClient, name: str) -> None:
    got = await embed(triton, photo(name), top_k=5)
    want = reference_mobilenet.embed(photo(name), top_k=5)
    assert float(got.embedding @ want.embedding) >= 0.999
    assert got.class_ids == want.class_ids
    assert got.labels == want.labels
    # Pillow's fixed-point filter and the service's float one round a few pixels one level
    # apart, which moves a probability by up to ~0.006.
    np.testing.assert_allclose(got.scores, want.scores, atol=0.01)


def zone_plate(height: int = 2400, width: int = 3200) -> bytes:
    """A JPEG whose frequencies rise towards its edges (cos of the squared radius, a phase per
    channel) over a coarse colour layout: shrinking it 11x without antialiasing aliases the
    fine rings into coarse false patterns, which an antialiased resize averages away."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    radius2 = ((xs - width / 2) ** 2 + (ys - height / 2) ** 2) * np.float32(np.pi / width)
    layout = np.stack([xs / width, ys / height, 1 - xs / width], axis=2) * np.float32(160)
    rings = np.stack([np.cos(radius2 + phase) for phase in (0.0, 2.1, 4.2)], axis=2)
    image = np.clip(layout + 47 * rings + 40, 0, 255).astype(np.uint8)
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    return bytes(buffer.tobytes())


@pytest.mark.parametrize("name", ["sample1.jpg", "sample4.jpg", "sample5.jpg", "zone plate"])
async def test_large_photos_are_embedded_as_the_network_was_evaluated(
    triton: InferenceServerClient, name: str
) -> None:
    """1920 px photos and a 3200 px high-frequency image, against torchvision's ImageNet
    preprocessing done by Pillow (antialiased): a resize that samples instead of averaging
    gave cosines down to 0.86 here and another top-1 class on sample1.jpg."""
    data = zone_plate() if name == "zone plate" else photo(name)
    got = await embed(triton, data, top_k=1)
    want = reference_mobilenet.embed(data, top_k=1)
    assert float(got.embedding @ want.embedding) >= 0.99
    assert got.class_ids == want.class_ids, (got.labels, want.labels)


async def test_a_smaller_jpeg_of_chelsea_is_nearest_to_chelsea(
    triton: InferenceServerClient,
) -> None:
    query = await embed(triton, chelsea_smaller_jpeg())
    others = await asyncio.gather(*(embed(triton, photo(name)) for name in PHOTO_NAMES))
    cosines = {
        name: float(query.embedding @ other.embedding)
        for name, other in zip(PHOTO_NAMES, others, strict=True)
    }
    assert cosines["chelsea.png"] >= 0.9, cosines
    assert max(cosines, key=lambda name: cosines[name]) == "chelsea.png", cosines


async def test_a_corrupt_image_is_flagged_while_its_burst_neighbours_are_fine(
    triton: InferenceServerClient,
) -> None:
    truncated = photo("coffee.png")[:2000]
    results = await asyncio.gather(
        *(embed(triton, photo("coffee.png") if i % 2 else truncated) for i in range(8))
    )
    for i, result in enumerate(results):
        if i % 2:
            assert (result.status, result.class_ids[0], result.size) == (0, 967, [400, 600])
        else:
            assert (result.status, result.class_ids, result.labels, result.size) == (
                1,
                [],
                [],
                [0, 0],
            )
            assert not np.any(result.embedding)


async def test_lists_of_a_multi_image_request_are_padded(triton: InferenceServerClient) -> None:
    coffee, garbage, chelsea = await embed_many(
        triton, [photo("coffee.png"), b"not an image", photo("chelsea.png")], [3, 2, 1]
    )
    assert coffee.class_ids[0] == 967 and len(coffee.class_ids) == 3
    assert (garbage.status, garbage.class_ids, garbage.scores) == (1, [-1, -1, -1], [0, 0, 0])
    assert chelsea.class_ids[1:] == [-1, -1] and chelsea.labels[1:] == ["", ""]


@pytest.mark.parametrize("top_k", [0, 1001])
async def test_top_k_out_of_range_is_an_error(triton: InferenceServerClient, top_k: int) -> None:
    with pytest.raises(InferenceServerException, match="TOP_K"):
        await embed(triton, photo("coffee.png"), top_k=top_k)


async def test_a_burst_of_requests_is_batched(triton: InferenceServerClient,
                                              triton_url: str) -> None:
    # On the CPU configuration mobilenet_v2 is one fused step (configs/cpu.pbtxt).
    before = {"mobilenet_v2": await counts(triton_url, "mobilenet_v2")}
    results = await asyncio.gather(*(embed(triton, photo("chelsea.png")) for _ in range(24)))
    assert {result.class_ids[0] for result in results} == {285}
    deltas = await counted_since(triton_url, before, 24)
    inferences, executions = deltas["mobilenet_v2"]
    assert executions < inferences, deltas
