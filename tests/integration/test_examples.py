"""`make examples` against the real server and Triton: every Go and Node example prints one
line per file of the folder and exits 0 when each image was OK or met a documented error."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.images import PHOTOS
from tests.integration.toolchains import needs_go, run

OK = "OK"
EMPTY = "INVALID_ARGUMENT EMPTY_IMAGE image.content"
NOT_AN_IMAGE = "INVALID_ARGUMENT INVALID_IMAGE image.content"


def sections(output: str) -> dict[str, dict[str, str]]:
    """`== <example>` headers, each followed by `<file> <outcome>` lines."""
    found: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    for line in output.splitlines():
        if line.startswith("== "):
            current = found.setdefault(line[3:], {})
        elif line.strip():
            name, outcome = line.split(" ", 1)
            current[name] = outcome
    return found


@needs_go
async def test_make_examples_runs_every_example(target: str, tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for name in ("astronaut.png", "chelsea.png"):
        shutil.copy(PHOTOS / name, images / name)
    (images / "empty.png").write_bytes(b"")
    (images / "notes.txt").write_text("not an image\n")

    code, out, err = await run("make", "-s", "examples", f"TARGET={target}", f"IMAGES={images}")

    assert code == 0, out + err
    unary = {"astronaut.png": OK, "chelsea.png": OK, "empty.png": EMPTY, "notes.txt": NOT_AN_IMAGE}
    assert sections(out) == {
        "go/detect": unary,
        # A stream names fields as it carries them: a 0-byte upload is empty at its header.
        "go/stream": {"astronaut.png": OK, "chelsea.png": OK,
                      "empty.png": "INVALID_ARGUMENT EMPTY_IMAGE header.size_bytes",
                      "notes.txt": "INVALID_ARGUMENT INVALID_IMAGE chunk.data"},
        "go/ingest": unary,
        "node/detect": unary,
        "node/grpc-js": unary,
    }


@needs_go
async def test_make_examples_fails_when_an_image_meets_an_undocumented_error(
        tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes((PHOTOS / "chelsea.png").read_bytes())
    # Nothing listens on port 9: every call is UNAVAILABLE, which is no bad-image answer.
    code, out, _ = await run("make", "-s", "examples", "TARGET=127.0.0.1:9", f"IMAGES={tmp_path}")
    assert code != 0
    assert {example: lines["a.png"].split()[0] for example, lines in sections(out).items()} == {
        "go/detect": "UNAVAILABLE", "go/stream": "UNAVAILABLE", "go/ingest": "UNAVAILABLE",
        "node/detect": "UNAVAILABLE", "node/grpc-js": "UNAVAILABLE"}
