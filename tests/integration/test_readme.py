"""The README's "Try it" commands, run as written (only the server's address changed) against
the real server: every grpcurl call and the CLI must succeed and say what the README implies."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from pathlib import Path

from tests.images import PHOTOS
from tests.integration.conftest import ROOT
from tests.integration.toolchains import needs_go, run


def try_it_block() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Try it"):]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match is not None
    return match.group(1)


async def test_the_readme_try_it_commands_succeed(target: str) -> None:
    script = try_it_block().replace("127.0.0.1:4603", target).replace(
        "vision-client detect", f"vision-client --target {target} detect")
    process = await asyncio.create_subprocess_exec(
        "bash", "-euo", "pipefail", "-c", script, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 300)
    assert process.returncode == 0, err.decode()
    text = out.decode()
    for expected in ("vision.v1.SearchService", '"SERVING"', '"person"', "Egyptian cat",
                     "Invoice #A-1234", '"yunet_mobilefacenet"', '"id": "coffee"', "cat ",
                     '"duplicate_of": "', '"name": "Barack Obama"', '"id": "obama"'):
        assert expected in text, expected


def go_recipe_block() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("**Go, offline.**"):]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match is not None
    return match.group(1)


@needs_go
async def test_the_go_recipe_runs_copied_into_a_folder_outside_the_repository(
        target: str, tmp_path: Path) -> None:
    for folder in ("protos", "third_party"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    for file in ("buf.yaml", "buf.gen.go.yaml"):
        shutil.copy(ROOT / file, tmp_path / file)
    shutil.copy(PHOTOS / "astronaut.png", tmp_path / "photo.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    script = go_recipe_block().replace("127.0.0.1:4603", target).replace(
        "photo.jpg", "photo.jpg empty.jpg")
    # buf from the repository's pinned install; the build cache of clients/go/build, for speed.
    env = {**os.environ, "PATH": f"{ROOT / 'node_modules' / '.bin'}:{os.environ['PATH']}",
           "GOCACHE": str(ROOT / "var" / "go" / "cache")}

    code, out, err = await run("bash", "-euo", "pipefail", "-c", script, cwd=tmp_path, env=env)

    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("photo.jpg person 0.9"), out
    empty = next(line for line in lines if line.startswith("empty.jpg"))
    assert empty.startswith("empty.jpg InvalidArgument")
    assert 'reason:"EMPTY_IMAGE"' in empty and 'field:"image.content"' in empty
