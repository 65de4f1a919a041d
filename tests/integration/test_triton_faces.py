"""The yunet_mobilefacenet BLS model on the real local Triton: face counts, landmark order and
identity cosines on real photos, checked against an independent in-process onnxruntime run;
per-image decode failures; dynamic batching read from Triton's statistics. Talks to Triton
directly (tritonclient)."""

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

from tests import reference_faces
from tests.images import decode, photo

pytestmark = pytest.mark.triton

MODEL = "yunet_mobilefacenet"
SERVER_DEFAULT_THRESHOLD = 0.6


@dataclass(frozen=True)
class FoundFaces:
    boxes: npt.NDArray[np.float32]  # [k, 4]
    scores: npt.NDArray[np.float32]  # [k]
    landmarks: npt.NDArray[np.float32]  # [k, 10]
    embeddings: npt.NDArray[np.float32]  # [k or 0, 128]
    size: list[int]
    status: int


@pytest_asyncio.fixture(loop_scope="session")
async def triton(triton_url: str) -> AsyncIterator[InferenceServerClient]:
    async with InferenceServerClient(triton_url) as client:
        yield client


async def find_faces(
    triton: InferenceServerClient,
    data: bytes,
    threshold: float = SERVER_DEFAULT_THRESHOLD,
    include_embeddings: bool = True,
) -> FoundFaces:
    image = InferInput("IMAGE", [1, 1], "BYTES")
    image.set_data_from_numpy(np.array([[data]], dtype=np.object_))
    score = InferInput("SCORE_THRESHOLD", [1, 1], "FP32")
    score.set_data_from_numpy(np.array([[threshold]], dtype=np.float32))
    include = InferInput("INCLUDE_EMBEDDINGS", [1, 1], "BOOL")
    include.set_data_from_numpy(np.array([[include_embeddings]], dtype=np.bool_))
    result = await triton.infer(MODEL, [image, score, include])
    return FoundFaces(
        boxes=result.as_numpy("BOXES")[0],
        scores=result.as_numpy("SCORES")[0],
        landmarks=result.as_numpy("LANDMARKS")[0],
        embeddings=result.as_numpy("EMBEDDINGS")[0],
        size=result.as_numpy("IMAGE_SIZE")[0].tolist(),
        status=int(result.as_numpy("IMAGE_STATUS")[0, 0]),
    )


@pytest.mark.parametrize(
    ("name", "count"),
    [
        ("sample1.jpg", 3),
        ("sample4.jpg", 4),
        ("sample5.jpg", 5),
        ("astronaut.png", 1),
        ("obama.jpg", 1),
        ("chelsea.png", 0),
        ("coffee.png", 0),
    ],
)
async def test_face_counts_and_reference_match(
    triton: InferenceServerClient, name: str, count: int
) -> None:
    got = await find_faces(triton, photo(name))
    image = decode(name)
    assert (got.status, got.size) == (0, list(image.shape[:2]))
    assert len(got.scores) == count
    assert got.boxes.shape == (count, 4) and got.landmarks.shape == (count, 10)
    assert got.embeddings.shape == (count, 128)
    assert np.all(got.scores >= SERVER_DEFAULT_THRESHOLD)
    assert np.all(np.diff(got.scores) <= 0)
    want = reference_faces.faces(image)
    assert len(want) == count
    for i, face in enumerate(want):
        assert np.abs(got.boxes[i] - face.box).max() <= 1.0, (got.boxes[i], face.box)
        assert np.abs(got.landmarks[i] - face.landmarks).max() <= 1.0
        assert abs(float(got.scores[i]) - face.score) < 1e-3
        assert float(got.embeddings[i] @ face.embedding) >= 0.999
        assert float(np.linalg.norm(got.embeddings[i])) == pytest.approx(1.0, abs=1e-5)


async def test_small_faces_of_a_group_photo_grid_are_found_and_told_apart(
    triton: InferenceServerClient,
) -> None:
    """sample5.jpg (5 people) shrunk to a third and tiled 3 x 3: 45 faces about 55 px wide,
    more than one MobileFaceNet call of 32 holds. The 9 copies of each person (told by where
    the face sits within its tile) embed alike, and unlike the other 4 people."""
    image = decode("sample5.jpg")
    tile_h, tile_w = image.shape[0] // 3, image.shape[1] // 3
    tile = cv2.resize(image, (tile_w, tile_h), interpolation=cv2.INTER_AREA)
    ok, grid = cv2.imencode(".png", np.vstack([np.hstack([tile] * 3)] * 3))
    assert ok
    got = await find_faces(triton, bytes(grid.tobytes()))
    assert len(got.scores) == 45
    assert float((got.boxes[:, 2] - got.boxes[:, 0]).max()) < 80
    centres = (got.boxes[:, :2] + got.boxes[:, 2:]) / 2
    in_tile = centres % np.array([tile_w, tile_h], dtype=np.float32)
    first_tile = in_tile[(centres[:, 0] < tile_w) & (centres[:, 1] < tile_h)]
    assert len(first_tile) == 5
    person = np.argmin(((in_tile[:, None] - first_tile[None]) ** 2).sum(axis=2), axis=1)
    assert np.bincount(person).tolist() == [9] * 5
    cosines = got.embeddings @ got.embeddings.T
    same = person[:, None] == person[None, :]
    assert cosines[same].min() >= 0.85 and cosines[~same].max() <= 0.6


async def test_landmarks_are_right_eye_left_eye_nose_right_and_left_mouth_corner(
    triton: InferenceServerClient,
) -> None:
    """The person's right eye and mouth corner are on the image's left in a frontal photo."""
    got = await find_faces(triton, photo("obama.jpg"))
    (right_eye, left_eye, nose, right_mouth, left_mouth) = got.landmarks[0].reshape(5, 2)
    x1, y1, x2, y2 = got.boxes[0]
    assert right_eye[0] < nose[0] < left_eye[0]
    assert right_mouth[0] < nose[0] < left_mouth[0]
    assert max(right_eye[1], left_eye[1]) < nose[1] < min(right_mouth[1], left_mouth[1])
    assert all(x1 <= x <= x2 and y1 <= y <= y2 for x, y in got.landmarks[0].reshape(5, 2))


async def test_identity_cosines(triton: InferenceServerClient) -> None:
    names = ("obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg", "astronaut.png")
    found = await asyncio.gather(*(find_faces(triton, photo(name)) for name in names))
    assert [len(f.scores) for f in found] == [1] * len(names)
    vectors = dict(zip(names, (f.embeddings[0] for f in found), strict=True))

    def cosine(a: str, b: str) -> float:
        return float(vectors[a] @ vectors[b])

    for a, b in (
        ("obama.jpg", "obama2.jpg"),
        ("obama.jpg", "obama3.jpg"),
        ("obama2.jpg", "obama3.jpg"),
    ):
        assert cosine(a, b) >= 0.6, (a, b, cosine(a, b))
    for other in ("biden.jpg", "astronaut.png"):
        assert cosine("obama.jpg", other) <= 0.3, (other, cosine("obama.jpg", other))


async def test_faces_without_embeddings(triton: InferenceServerClient) -> None:
    with_embeddings, without = await asyncio.gather(
        find_faces(triton, photo("sample4.jpg")),
        find_faces(triton, photo("sample4.jpg"), include_embeddings=False),
    )
    assert without.embeddings.shape == (0, 128)
    np.testing.assert_array_equal(without.boxes, with_embeddings.boxes)
    np.testing.assert_array_equal(without.landmarks, with_embeddings.landmarks)


async def test_a_lower_threshold_finds_at_least_as_many_faces(
    triton: InferenceServerClient,
) -> None:
    strict, loose = await asyncio.gather(
        find_faces(triton, photo("sample5.jpg"), threshold=0.9),
        find_faces(triton, photo("sample5.jpg"), threshold=0.3),
    )
    assert np.all(strict.scores >= 0.9) and len(strict.scores) <= 5 <= len(loose.scores)


async def test_a_corrupt_image_is_flagged_while_its_burst_neighbours_are_fine(
    triton: InferenceServerClient,
) -> None:
    truncated = photo("obama.jpg")[:3000]
    results = await asyncio.gather(
        *(find_faces(triton, photo("astronaut.png") if i % 2 else truncated) for i in range(8))
    )
    for i, result in enumerate(results):
        if i % 2:
            assert (result.status, len(result.scores), result.size) == (0, 1, [512, 512])
        else:
            assert (result.status, result.size) == (1, [0, 0])
            assert result.boxes.shape == (0, 4) and result.embeddings.shape == (0, 128)


@pytest.mark.parametrize("threshold", [-0.5, 1.5, float("nan")])
async def test_a_threshold_out_of_range_is_an_error(
    triton: InferenceServerClient, threshold: float
) -> None:
    with pytest.raises(InferenceServerException, match="SCORE_THRESHOLD"):
        await find_faces(triton, photo("astronaut.png"), threshold=threshold)


async def _counts(triton: InferenceServerClient, model: str) -> tuple[int, int]:
    stats = await triton.get_inference_statistics(model_name=model, as_json=True)
    (entry,) = [s for s in stats["model_stats"] if s["name"] == model]
    return int(entry.get("inference_count", 0)), int(entry.get("execution_count", 0))


async def _deltas_once_counted(
    triton: InferenceServerClient, before: dict[str, tuple[int, int]], items: int
) -> dict[str, tuple[int, int]]:
    """(inferences, executions) per step since `before`, read once every step has counted
    `items` more inferences: a step's statistics may be updated just after its response left."""
    async with asyncio.timeout(30):
        while True:
            after = {step: await _counts(triton, step) for step in before}
            deltas = {
                step: (after[step][0] - before[step][0], after[step][1] - before[step][1])
                for step in before
            }
            if all(inferences >= items for inferences, _ in deltas.values()):
                return deltas
            await asyncio.sleep(0.05)


async def test_a_burst_of_requests_is_batched(triton: InferenceServerClient) -> None:
    # On the CPU configuration the BLS model runs its network steps in its own process
    # (configs/cpu.pbtxt, steps_in_process), so its own executions are what batching shows in.
    before = {MODEL: await _counts(triton, MODEL)}
    results = await asyncio.gather(*(find_faces(triton, photo("obama.jpg")) for _ in range(16)))
    assert [len(result.scores) for result in results] == [1] * 16
    deltas = await _deltas_once_counted(triton, before, 16)
    inferences, executions = deltas[MODEL]
    assert executions < inferences, deltas
