"""`python -m bench.similarity`: the cosine figures behind two settings' defaults, measured on the
test photos through the service (the default image-embedding and face models).

- `ingest.near_duplicate_cosine`: image-embedding cosine between each photo and its re-encodes
  (JPEG at several qualities, WebP) and resizes, versus between distinct photos, those of one
  scene (sample1/4/5: one group of people; obama/obama2/obama3: one person) reported apart.
- `people.match_cosine`: identity-embedding cosine of the largest face, the same person in
  different photos (obama, obama2, obama3) versus different people (obama* vs biden and
  astronaut; the faces of one group photo, who are different people by construction).

A default sits in the gap between the two populations; the printout says where the gap is.
Starts its own Triton on free ports and a server in this process unless `--target` names a
running server.
Writes bench/report/similarity.json and the tables to bench/report/similarity.md, and prints
them.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from bench.payloads import ROOT
from server.app import create_server
from server.settings import (
    IngestSettings,
    PeopleSettings,
    Settings,
    StoreSettings,
    TritonSettings,
)
from tests.images import decode, photo
from tools.local_triton import start_triton
from vision.v1 import face_pb2
from vision_client import VisionClient

REPORT = ROOT / "bench" / "report" / "similarity.json"
TABLES = ROOT / "bench" / "report" / "similarity.md"
PHOTOS = ("sample1.jpg", "sample4.jpg", "sample5.jpg", "obama.jpg", "obama2.jpg", "obama3.jpg",
          "biden.jpg", "astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png")
SCENES = (("sample1.jpg", "sample4.jpg", "sample5.jpg"), ("obama.jpg", "obama2.jpg", "obama3.jpg"))
SAME_PERSON = ("obama.jpg", "obama2.jpg", "obama3.jpg")
OTHER_PEOPLE = ("biden.jpg", "astronaut.png")
GROUP_PHOTOS = ("sample1.jpg", "sample4.jpg", "sample5.jpg")

Image = npt.NDArray[Any]


def _encoded(image: Image, ext: str, params: list[int]) -> bytes:
    ok, buffer = cv2.imencode(ext, image, params)
    assert ok
    return bytes(buffer.tobytes())


def _jpeg(quality: int) -> Callable[[Image], bytes]:
    return lambda image: _encoded(image, ".jpg", [cv2.IMWRITE_JPEG_QUALITY, quality])


def _resized(scale: float) -> Callable[[Image], bytes]:
    def variant(image: Image) -> bytes:
        height, width = image.shape[:2]
        smaller = cv2.resize(image, (round(width * scale), round(height * scale)),
                             interpolation=cv2.INTER_AREA)
        return _encoded(smaller, ".jpg", [cv2.IMWRITE_JPEG_QUALITY, 90])
    return variant


VARIANTS: dict[str, Callable[[Image], bytes]] = {
    **{f"jpeg q{quality}": _jpeg(quality) for quality in (95, 75, 50, 30)},
    "webp q80": lambda image: _encoded(image, ".webp", [cv2.IMWRITE_WEBP_QUALITY, 80]),
    "resize 1/2": _resized(0.5),
    "resize 1/4": _resized(0.25),
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cosine(a: Any, b: Any) -> float:
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


def spread(values: list[float], default: float) -> dict[str, float]:
    """The population's range and how many of it reach the setting's default."""
    return {"min": round(min(values), 4), "max": round(max(values), 4),
            "mean": round(float(np.mean(values)), 4), "n": len(values),
            "at_or_above_default": sum(value >= default for value in values)}


async def image_figures(client: VisionClient) -> dict[str, Any]:
    originals = {name: list((await client.embed(photo(name))).embedding.values)
                 for name in PHOTOS}
    variants: dict[str, list[float]] = {label: [] for label in VARIANTS}
    for name in PHOTOS:
        for label, make in VARIANTS.items():
            embedded = await client.embed(make(decode(name)))
            variants[label].append(cosine(originals[name], embedded.embedding.values))
    scene_pairs = {frozenset(pair) for scene in SCENES
                   for pair in itertools.combinations(scene, 2)}
    same_scene: list[float] = []
    other: list[float] = []
    for a, b in itertools.combinations(PHOTOS, 2):
        value = cosine(originals[a], originals[b])
        (same_scene if frozenset((a, b)) in scene_pairs else other).append(value)
    every_variant = [v for values in variants.values() for v in values]
    distinct = same_scene + other
    default = IngestSettings().near_duplicate_cosine
    return {"default": default,
            "variants": {label: spread(values, default) for label, values in variants.items()},
            "every_variant": spread(every_variant, default),
            "same_scene_pairs": spread(same_scene, default),
            "other_pairs": spread(other, default),
            "gap": [round(max(distinct), 4), round(min(every_variant), 4)]}


async def _faces(client: VisionClient, name: str) -> list[tuple[float, list[float]]]:
    """(box area, identity embedding) of each face, largest first."""
    found = await client.detect_faces(photo(name), face_pb2.FaceOptions(include_embeddings=True))
    faces = [((f.box.x_max - f.box.x_min) * (f.box.y_max - f.box.y_min),
              list(f.embedding.values)) for f in found.faces]
    return sorted(faces, key=lambda face: -face[0])


async def face_figures(client: VisionClient) -> dict[str, Any]:
    largest = {name: (await _faces(client, name))[0][1] for name in SAME_PERSON + OTHER_PEOPLE}
    same = [cosine(largest[a], largest[b]) for a, b in itertools.combinations(SAME_PERSON, 2)]
    different = [cosine(largest[a], largest[b])
                 for a, b in itertools.product(SAME_PERSON, OTHER_PEOPLE)]
    different.append(cosine(largest[OTHER_PEOPLE[0]], largest[OTHER_PEOPLE[1]]))
    group_faces = 0
    for name in GROUP_PHOTOS:
        faces = [embedding for _, embedding in await _faces(client, name)]
        group_faces += len(faces)
        different.extend(cosine(a, b) for a, b in itertools.combinations(faces, 2))
    default = PeopleSettings().match_cosine
    return {"default": default, "same_person": spread(same, default),
            "different_people": spread(different, default),
            "group_photo_faces": group_faces,
            "gap": [round(max(different), 4), round(min(same), 4)]}


async def measure(target: str) -> dict[str, Any]:
    async with VisionClient(target, timeout_s=120.0) as client:
        return {"near_duplicate": await image_figures(client),
                "identity": await face_figures(client)}


async def measure_in_process(triton_url: str, store: Path) -> dict[str, Any]:
    running = await create_server(Settings(port=0, metrics_port=0,
                                           triton=TritonSettings(url=triton_url),
                                           store=StoreSettings(path=str(store))))
    try:
        await running.health_watcher.checked.wait()
        return await measure(f"127.0.0.1:{running.port}")
    finally:
        await running.stop(grace_s=1.0)


def markdown(results: dict[str, Any]) -> str:
    near, identity = results["near_duplicate"], results["identity"]

    def row(label: str, s: dict[str, float]) -> str:
        return (f"| {label} | {s['n']} | {s['min']:.3f} | {s['mean']:.3f} | {s['max']:.3f} "
                f"| {s['at_or_above_default']} |")

    header = "| pair | n | min | mean | max | >= default |\n|---|---|---|---|---|---|"
    lines = [f"Image-embedding cosine (near duplicates; default ingest.near_duplicate_cosine "
             f"{near['default']}):", "", header,
             *(row(f"photo vs its {label}", s) for label, s in near["variants"].items()),
             row("every re-encode and resize", near["every_variant"]),
             row("distinct photos of one scene", near["same_scene_pairs"]),
             row("other distinct photos", near["other_pairs"]),
             "", f"Gap: distinct photos reach {near['gap'][0]:.3f}, re-encodes and resizes "
             f"fall to {near['gap'][1]:.3f}.", "",
             f"Identity-embedding cosine (largest face; group photos: every pair of faces; "
             f"default people.match_cosine {identity['default']}):", "", header,
             row("same person, different photos", identity["same_person"]),
             row("different people", identity["different_people"]),
             "", f"Gap: different people reach {identity['gap'][0]:.3f}, the same person falls "
             f"to {identity['gap'][1]:.3f}."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.similarity", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", help="a running vision-grpc server, host:port (default: "
                        "start Triton and a server on free ports)")
    args = parser.parse_args()
    if args.target:
        results = asyncio.run(measure(args.target))
    else:
        scratch = Path(tempfile.mkdtemp(prefix="bench-similarity-", dir=ROOT / "var"))
        triton = start_triton(http_port=free_port(), grpc_port=free_port(),
                              metrics_port=free_port(), log_path=scratch / "triton.log")
        try:
            results = asyncio.run(measure_in_process(triton.grpc_url, scratch / "store"))
        finally:
            triton.stop()
    results["command"] = ".venv/bin/python -m bench.similarity"
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps(results, indent=1))
    tables = markdown(results)
    TABLES.write_text(f"# Similarity calibration\n\n`{results['command']}`\n\n{tables}\n")
    print(tables)


if __name__ == "__main__":
    main()
