"""`python -m bench.ocr_input_size`: the figures behind the OCR detector's input size
(ppocr_v6's parameter det_max_side_len, triton_models/ocr/detection.py).

1. In this process (the CPU configuration's code and ONNX files, one thread), for each candidate
   longer side of the detector's input: the time to read a 12-MP photo without text (sample1.jpg
   upscaled to 4032 x 3024), and whether every line of the test references is still found:
   RapidOCR's own lines (tests/reference_ocr.py), word for word, on page.png and
   synthetic_text.png; and on those two upscaled to 12 MP, the lines read with no cap ("none",
   the detector input before the setting), each found when a line reads at least 80 % alike
   (difflib; a crop cut from another box may read one character differently).
2. Through the service (`--service`): IngestImage of 12-MP JPEGs on two Tritons side by side, one
   with the old detector input (no cap) and one with the default, alternating, and the ratio of
   their median times.

The rule: the default is the smallest candidate at and above which every candidate still finds
every reference line (a smaller one that happens to find them all does not count: its margin
is chance). Writes bench/report/ocr_input_size.json and .md, and prints the tables.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import json
import re
import shutil
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from bench.payloads import ROOT
from server.app import create_server
from server.settings import Settings, StoreSettings, TritonSettings
from tests import reference_ocr
from tests.images import PHOTOS, decode
from tools.local_triton import MODEL_REPOSITORY, start_triton
from triton_models.ocr.detection import DET_MAX_SIDE_LEN
from triton_models.ocr.pipeline import REC_MODEL, read_images
from triton_models.ocr.recognition import CHARACTERS_FILE, read_charset
from triton_models.steps import InProcessSteps
from vision_client import VisionClient

REPORT = ROOT / "bench" / "report" / "ocr_input_size.json"
TABLES = ROOT / "bench" / "report" / "ocr_input_size.md"
UNCAPPED = 4096  # above any bounded image's side: the detector input before the setting
CANDIDATES = (UNCAPPED, 1600, 1280, 1024, 960, 800, 640)
TWELVE_MP = (3024, 4032)
REFERENCES = ("page.png", "synthetic_text.png")

Image = npt.NDArray[np.uint8]


def twelve_mp(name: str) -> Image:
    return np.asarray(cv2.resize(decode(name), TWELVE_MP[::-1],
                                 interpolation=cv2.INTER_CUBIC), dtype=np.uint8)


def alike(a: str, b: str) -> bool:
    return difflib.SequenceMatcher(None, a, b).ratio() >= 0.8


def jpeg(image: Image) -> bytes:
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 92])
    assert ok
    return bytes(buffer.tobytes())


def in_process(rounds: int) -> dict[str, Any]:
    steps = InProcessSteps(MODEL_REPOSITORY, intra_op_threads=1)
    charset = read_charset(MODEL_REPOSITORY / REC_MODEL / "1" / CHARACTERS_FILE)
    cases = {name: decode(name) for name in REFERENCES} | {
        f"{name} at 12 MP": twelve_mp(name) for name in REFERENCES}
    expected = {name: [line.text for line in reference_ocr.read(PHOTOS / name)]
                for name in REFERENCES} | {
        case: list(read_images([image], charset, steps, UNCAPPED)[0].texts)
        for case, image in cases.items() if case not in REFERENCES}
    photo = twelve_mp("sample1.jpg")
    times: dict[int, list[float]] = {side: [] for side in CANDIDATES}
    for _ in range(rounds):  # the candidates alternate, so other load hits them alike
        for side in CANDIDATES:
            start = time.perf_counter()
            read_images([photo], charset, steps, side)
            times[side].append(time.perf_counter() - start)
    rows = []
    for side in CANDIDATES:
        missing = {}
        for case, image in cases.items():
            (lines,) = read_images([image], charset, steps, side)
            found = list(lines.texts)
            lost = [text for text in expected[case] if not any(
                (text == line) if case in REFERENCES else alike(text, line) for line in found)]
            if lost:
                missing[case] = lost
        rows.append({"det_max_side_len": "none" if side == UNCAPPED else side,
                     "photo_12mp_s": round(statistics.median(times[side]), 3),
                     "missing_lines": missing})
    return {"rounds": rounds, "rows": rows}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def repository_with(side: int, into: Path) -> Path:
    """A copy of model_repository whose ppocr_v6 configs carry det_max_side_len = side."""
    target = into / f"repository-{side}"
    shutil.copytree(MODEL_REPOSITORY, target, symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.onnx"))
    for onnx in MODEL_REPOSITORY.glob("*/*/*.onnx"):
        (target / onnx.relative_to(MODEL_REPOSITORY)).symlink_to(onnx.resolve())
    for config in (target / "ppocr_v6" / "config.pbtxt", target / "ppocr_v6" / "configs" /
                   "cpu.pbtxt"):
        text, count = re.subn(r'(key: "det_max_side_len" value: \{ string_value: )"\d+"',
                              rf'\1"{side}"', config.read_text())
        assert count == 1, config
        config.write_text(text)
    return target


async def ingest_times(targets: dict[str, str], images: list[bytes], rounds: int
                       ) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {arm: [] for arm in targets}
    clients = {arm: VisionClient(target, timeout_s=300) for arm, target in targets.items()}
    try:
        for client in clients.values():  # warm-up: first calls load sessions
            await client.ingest("warm-up", images[0])
        for round_ in range(rounds):
            for i, image in enumerate(images):
                for arm, client in clients.items():
                    start = time.perf_counter()
                    await client.ingest(f"{round_}-{i}", image)
                    times[arm].append(time.perf_counter() - start)
    finally:
        for client in clients.values():
            await client.close()
    return times


async def serve_and_measure(triton_urls: dict[str, str], scratch: Path, rounds: int
                            ) -> dict[str, list[float]]:
    servers = {arm: await create_server(Settings(
        port=0, metrics_port=0, triton=TritonSettings(url=url),
        store=StoreSettings(path=str(scratch / f"store-{arm}"))))
        for arm, url in triton_urls.items()}
    try:
        for running in servers.values():
            await running.health_watcher.checked.wait()
        images = [jpeg(twelve_mp(name)) for name in ("sample1.jpg", "sample4.jpg",
                                                     "synthetic_text.png")]
        return await ingest_times({arm: f"127.0.0.1:{s.port}" for arm, s in servers.items()},
                                  images, rounds)
    finally:
        for running in servers.values():
            await running.stop(grace_s=1.0)


def service(rounds: int, sides: list[int]) -> dict[str, Any]:
    scratch = Path(tempfile.mkdtemp(prefix="bench-ocr-size-", dir=ROOT / "var"))
    arms = {"none": UNCAPPED} | {str(side): side for side in sides}
    tritons = {arm: start_triton(http_port=free_port(), grpc_port=free_port(),
                                 metrics_port=free_port(), log_path=scratch / f"triton-{arm}.log",
                                 model_repository=repository_with(side, scratch))
               for arm, side in arms.items()}
    try:
        times = asyncio.run(serve_and_measure(
            {arm: triton.grpc_url for arm, triton in tritons.items()}, scratch, rounds))
    finally:
        for triton in tritons.values():
            triton.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    medians = {arm: statistics.median(values) for arm, values in times.items()}
    return {"ingest_12mp_median_s": {arm: round(m, 3) for arm, m in medians.items()},
            "speedup": {arm: round(medians["none"] / m, 2) for arm, m in medians.items()
                        if arm != "none"},
            "calls_per_arm": len(times["none"])}


def by_the_rule(rows: list[dict[str, Any]]) -> int:
    """The smallest cap at and above which no candidate misses a reference line."""
    chosen = UNCAPPED
    for row in rows:  # CANDIDATES run from no cap down
        if row["missing_lines"]:
            break
        chosen = UNCAPPED if row["det_max_side_len"] == "none" else int(row["det_max_side_len"])
    return chosen


def markdown(results: dict[str, Any]) -> str:
    rows = results["in_process"]["rows"]
    lines = [f"Default by the rule: {by_the_rule(rows)} (committed: {DET_MAX_SIDE_LEN}).", "",
             "| det_max_side_len | read a 12-MP photo, s | reference lines not found |",
             "|---|---|---|"]
    for row in rows:
        missing = "; ".join(f"{case}: {lost}" for case, lost in row["missing_lines"].items())
        lines.append(f"| {row['det_max_side_len']} | {row['photo_12mp_s']} | "
                     f"{missing or 'none'} |")
    if "service" in results:
        figures = results["service"]
        lines += ["", f"IngestImage of 12-MP JPEGs (median of {figures['calls_per_arm']} "
                      "each, alternating): " + ", ".join(
                          f"det_max_side_len {arm}: {seconds} s" for arm, seconds in
                          figures["ingest_12mp_median_s"].items())
                  + "; speed-up " + ", ".join(f"{arm}: {ratio}x" for arm, ratio in
                                              figures["speedup"].items())]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ocr_input_size", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--service", action="store_true",
                        help="also time IngestImage through Tritons side by side: no cap and "
                        "each --side")
    parser.add_argument("--side", type=int, action="append",
                        help=f"a det_max_side_len for --service (default {DET_MAX_SIDE_LEN})")
    args = parser.parse_args()
    results: dict[str, Any] = {"in_process": in_process(args.rounds)}
    if args.service:
        results["service"] = service(args.rounds, args.side or [DET_MAX_SIDE_LEN])
    results["command"] = ".venv/bin/python -m bench.ocr_input_size" + (
        " --service" + "".join(f" --side {side}" for side in args.side or [])
        if args.service else "")
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps(results, indent=1))
    tables = markdown(results)
    TABLES.write_text(f"# OCR detection input size\n\n`{results['command']}` "
                      f"({results['in_process']['rounds']} rounds; in-process times are one "
                      f"thread, medians)\n\n{tables}\n")
    print(tables)


if __name__ == "__main__":
    main()
