"""The `vision-client` CLI as a user runs it, against the real server: a folder of 50 photos
through a pseudo-terminal shows the progress bar (count, rate, ETA) and its table; `--json`
piped gives one parseable object per image and no bar; exit codes for failed images and an
unreachable server; duplicates in the index summary, people, more like this and score floors."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import pty
import re
import shutil
import sys
from pathlib import Path

from server.app import create_server
from tests.images import PHOTOS, photo
from tests.integration.conftest import ROOT, free_port, settings_for
from vision_client import VisionClient

PHOTO_LABELS = {"astronaut.png": "person", "chelsea.png": "cat", "coffee.png": "cup",
                "motorcycle_left.png": "motorcycle"}
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "clients" / "python"),
                                                    str(ROOT / "api" / "python"), str(ROOT)])}


def folder_of_photos(tmp_path: Path, count: int) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    names = sorted(PHOTO_LABELS)
    for i in range(count):
        name = names[i % len(names)]
        shutil.copy(PHOTOS / name, folder / f"{i:02d}-{name}")
    return folder


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "vision_client.cli", *args]


def _read_until_closed(fd: int) -> bytes:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError as err:  # EIO: the child closed the terminal
            if err.errno == errno.EIO:
                break
            raise
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


async def run_in_terminal(*args: str) -> tuple[int, str]:
    """Runs the CLI with stdout and stderr on a pseudo-terminal; its exit code and screen."""
    main, terminal = pty.openpty()
    process = await asyncio.create_subprocess_exec(
        *cli(*args), stdin=terminal, stdout=terminal, stderr=terminal, env=ENV)
    os.close(terminal)
    try:
        # Read in a thread: the server under test runs on this event loop.
        screen = await asyncio.wait_for(asyncio.to_thread(_read_until_closed, main), 300)
    finally:
        os.close(main)
    return await process.wait(), screen.decode()


async def run_piped(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *cli(*args), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=ENV)
    out, err = await asyncio.wait_for(process.communicate(), 300)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_fifty_photos_show_a_progress_bar(target: str, tmp_path: Path) -> None:
    folder = folder_of_photos(tmp_path, 50)
    code, screen = await run_in_terminal("detect", str(folder), "--target", target,
                                         "--concurrency", "8")
    assert code == 0, screen
    bars = re.findall(r"\[([#.]{28})\] (\d+)/50 (\d+\.\d) img/s ETA (\S+)", screen)
    done = [int(count) for _, count, _, _ in bars]
    assert done[0] == 0 and done[-1] == 50
    assert done == sorted(done) and len(set(done)) == 51  # redrawn once per image
    assert bars[-1][0] == "#" * 28 and bars[-1][3] == "0:00"
    assert float(bars[-1][2]) > 0
    assert screen.count(str(folder)) == 50  # every image's table row


async def test_json_output_parses_and_has_no_bar(target: str, tmp_path: Path) -> None:
    folder = folder_of_photos(tmp_path, 12)
    code, out, err = await run_piped("--json", "detect", str(folder), "--target", target)
    assert code == 0, err
    assert err == ""  # not a terminal: no progress bar
    results = [json.loads(line) for line in out.splitlines()]
    assert sorted(r["image"] for r in results) == sorted(str(p) for p in folder.iterdir())
    for result in results:
        label = PHOTO_LABELS[Path(result["image"]).name[3:]]
        assert result["detections"][0]["label"] == label


async def test_exit_codes(target: str, tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(photo("chelsea.png")[:100])
    code, out, _ = await run_piped("--json", "ocr", str(broken), "--target", target)
    assert code == 1
    assert json.loads(out)["error"].startswith("INVALID_ARGUMENT")
    code, _, err = await run_piped("models", "--target", f"127.0.0.1:{free_port()}",
                                   "--timeout", "2")
    assert code == 3
    assert err.startswith("vision-client: UNAVAILABLE")
    code, _, _ = await run_piped("detect", "x", "--concurrency", "0")
    assert code == 2


async def test_index_a_folder_then_search_it(target: str, tmp_path: Path) -> None:
    folder = tmp_path / "album"
    folder.mkdir()
    for name in ("chelsea.png", "synthetic_text.png", "obama.jpg", "obama2.jpg"):
        shutil.copy(PHOTOS / name, folder / f"cli-{name}")
    code, screen = await run_in_terminal("index", str(folder), "--target", target,
                                         "--metadata", "album=cli")
    assert code == 0, screen
    assert re.search(r"\] 4/4 ", screen), screen
    code, out, err = await run_piped("--json", "search", "--text", "Invoice", "--target", target,
                                     "--where", "album=cli")
    assert code == 0, err
    assert json.loads(out.splitlines()[0])["id"] == "cli-synthetic_text.png"
    code, out, err = await run_piped("search", "--face", str(PHOTOS / "obama3.jpg"),
                                     "--where", "album=cli", "--limit", "2", "--target", target)
    assert code == 0, err
    assert sorted(line.split()[1] for line in out.splitlines()) == [
        "cli-obama.jpg", "cli-obama2.jpg"]


def json_lines(out: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.splitlines()]


async def test_duplicates_people_and_more_like_this_from_the_shell(
    triton_url: str, tmp_path: Path,
) -> None:
    # A server of its own: duplicates and people are judged against everything stored.
    running = await create_server(settings_for(triton_url))
    try:
        await duplicates_people_and_more_like_this(f"127.0.0.1:{running.port}", tmp_path)
    finally:
        await running.stop(grace_s=1)


async def duplicates_people_and_more_like_this(target: str, tmp_path: Path) -> None:
    folder = tmp_path / "album2"
    folder.mkdir()
    for name in ("obama3.jpg", "biden.jpg", "coffee.png"):
        shutil.copy(PHOTOS / name, folder / f"cli2-{name}")
    shutil.copy(PHOTOS / "obama3.jpg", folder / "cli2-obama3-copy.jpg")
    code, out, err = await run_piped("--json", "index", str(folder), "--target", target,
                                     "--metadata", "album=cli2")
    assert code == 0, err
    summary = json_lines(out)[-1]["summary"]
    assert isinstance(summary, dict)
    assert (summary["indexed"], summary["failed"]) == (4, 0)
    duplicates = summary["duplicates"]
    assert isinstance(duplicates, dict) and len(duplicates) == 1
    ((copy, original),) = duplicates.items()  # which one is the copy depends on arrival
    assert sorted([copy, original]) == ["cli2-obama3-copy.jpg", "cli2-obama3.jpg"]
    code, out, err = await run_piped("index", str(folder / "cli2-coffee.png"), "--target", target,
                                     "--metadata", "album=cli2")
    assert code == 0, err
    assert "indexed 1, failed 0, duplicates 0" in out  # its own earlier version is no duplicate

    code, out, err = await run_piped("--json", "search", "--similar-to", "cli2-obama3.jpg",
                                     "--min-score", "0.95", "--target", target)
    assert code == 0, err
    assert [hit["id"] for hit in json_lines(out)] == ["cli2-obama3-copy.jpg"]

    code, out, err = await run_piped("--json", "people", "--target", target)
    assert code == 0, err
    people = json_lines(out)
    assert people and all(str(p["id"]).startswith("p-") for p in people)
    code, out, err = await run_piped("--json", "search", "--where", "album=cli2", "--face",
                                     str(PHOTOS / "biden.jpg"), "--limit", "1",
                                     "--target", target)
    assert code == 0, err
    assert json_lines(out)[0]["id"] == "cli2-biden.jpg"

    async with VisionClient(target) as client:
        (obama,) = [f.person_id for f in (await client.get_image("cli2-obama3.jpg")).faces]
        (biden,) = [f.person_id for f in (await client.get_image("cli2-biden.jpg")).faces]
    code, out, err = await run_piped("people", "rename", obama, "Barack Obama",
                                     "--target", target)
    assert code == 0, err
    assert "Barack Obama" in out
    code, out, err = await run_piped("--json", "search", "--person", obama,
                                     "--where", "album=cli2", "--target", target)
    assert code == 0, err
    assert sorted(str(hit["id"]) for hit in json_lines(out)) == [
        "cli2-obama3-copy.jpg", "cli2-obama3.jpg"]
    code, out, err = await run_piped("--json", "people", "merge", biden, "--into", obama,
                                     "--target", target)
    assert code == 0, err
    (merged,) = json_lines(out)
    assert (merged["id"], merged["name"]) == (obama, "Barack Obama")
    code, _, err = await run_piped("people", "show", biden, "--target", target)
    assert code == 3 and "NOT_FOUND" in err
