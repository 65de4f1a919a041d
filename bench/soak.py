"""A soak of mixed traffic through one Triton crash: a real Triton and the server as
its own process (default settings), callers of every kind for `--minutes`, and in the middle
Triton is killed with SIGKILL and started again on the same ports. The server is left to recover
by itself (circuit breaker, health watcher). Not a timed test: it measures and writes a report.

    .venv/bin/python -m bench.soak [--minutes 10] [--out bench/report]

Callers, each with one call in flight and a pause between calls, through the SDK without its
retries (every status is counted as the server gave it; after a refusal a caller waits what
RetryInfo asks): DetectObjects, EmbedImage, DetectFaces, ExtractText on the test photos; upload
streams of three images (one 6 MB PNG); IngestImage then Search by text and by image; bad inputs
(bytes that are no image, a scan bomb, an unknown model). Sampled every second: the server's
RSS, Triton's and its stubs' PSS, and the codes of the calls that ended in that second. Written
to <out>/soak.json, soak.md and soak.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psutil

from bench.overload import retry_delay_s
from bench.payloads import ROOT, large_png, photos, small_jpeg
from bench.procs import ServerProcess, launch_triton
from tests.images import scan_bomb
from tools.local_triton import LocalTriton, start_triton, stop_process
from vision.v1 import detection_pb2, image_pb2, model_pb2, search_service_pb2
from vision_client import NO_RETRY, StreamImage, VisionClient

CALL_TIMEOUT_S = 20.0
STREAM_TIMEOUT_S = 60.0
PAUSE_S = 0.5  # between one caller's calls: mixed load, not an overload
SAMPLE_EVERY_S = 1.0
CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}
# Codes a caller may see, and why; anything else is listed as unexpected in the report.
EXPECTED = {
    "OK": "served",
    "INVALID_ARGUMENT": "the bad-input caller's images (not an image, scan bomb)",
    "NOT_FOUND": "the bad-input caller's unknown model",
    "UNAVAILABLE": "Triton down: the breaker (or a call in flight when Triton died)",
    "RESOURCE_EXHAUSTED": "admission or Triton's queue refusing the excess",
}


@dataclass
class Outcomes:
    """Every call's end: (seconds since start, caller, code)."""

    start: float
    rows: list[tuple[float, str, str]] = field(default_factory=list)

    def add(self, caller: str, code: str) -> None:
        self.rows.append((round(time.monotonic() - self.start, 2), caller, code))


@dataclass
class Timeline:
    events: dict[str, float] = field(default_factory=dict)

    def mark(self, name: str, start: float) -> None:
        self.events[name] = round(time.monotonic() - start, 2)


class Memory:
    """Server RSS and Triton's PSS (with its stubs) every second; Triton's pid changes when it
    is restarted, so it is looked up through `triton()` each time."""

    def __init__(self, server_pid: int, triton: Callable[[], LocalTriton | None],
                 start: float) -> None:
        self.server = psutil.Process(server_pid)
        self.triton = triton
        self.start = start
        self.rows: list[tuple[float, float, float]] = []

    def triton_pss(self) -> float:
        current = self.triton()
        if current is None or current.process.poll() is not None:
            return 0.0
        total = 0
        root = psutil.Process(current.pid)
        for process in [root, *root.children(recursive=True)]:
            try:
                total += int(process.memory_full_info().pss)
            except psutil.NoSuchProcess:
                continue
        return round(total / 2**20, 1)

    async def run(self) -> None:
        while True:
            server = round(self.server.memory_info().rss / 2**20, 1)
            self.rows.append((round(time.monotonic() - self.start, 1), server, self.triton_pss()))
            await asyncio.sleep(SAMPLE_EVERY_S)


async def caller(name: str, call: Callable[[], Awaitable[list[str]]], outcomes: Outcomes,
                 until: float, rng: random.Random) -> None:
    """Calls `call` until `until`; it returns the codes of what it did (one per call, or one
    per streamed image plus the stream's own)."""
    await asyncio.sleep(rng.uniform(0, PAUSE_S))
    while time.monotonic() < until:
        pause = PAUSE_S
        try:
            for code in await call():
                outcomes.add(name, code)
        except grpc.aio.AioRpcError as error:
            outcomes.add(name, error.code().name)
            pause = max(pause, retry_delay_s(error))
        await asyncio.sleep(pause * rng.uniform(0.5, 1.5))


def callers(client: VisionClient, rng: random.Random
            ) -> dict[str, Callable[[], Awaitable[list[str]]]]:
    images = photos()
    jpeg = small_jpeg()
    big = large_png()
    counter = iter(range(10**9))

    def any_image() -> bytes:
        return rng.choice(images)

    async def detect() -> list[str]:
        await client.detect(any_image())
        return ["OK"]

    async def embed() -> list[str]:
        await client.embed(any_image())
        return ["OK"]

    async def faces() -> list[str]:
        await client.detect_faces(any_image())
        return ["OK"]

    async def ocr() -> list[str]:
        await client.extract_text(any_image())
        return ["OK"]

    async def stream() -> list[str]:
        n = next(counter)
        uploads = [StreamImage(f"s{n}-{i}", content) for i, content in
                   enumerate([jpeg, big, any_image()])]
        # Each image's own status; the stream's, when it fails as a whole, is raised.
        return [f"item:{CODE_NAMES.get(response.status.code, 'UNKNOWN')}"
                async for response in client.stream_detect(uploads)]

    async def ingest_search() -> list[str]:
        image = any_image()
        await client.ingest(f"soak-{next(counter) % 50}", image)
        await client.search(search_service_pb2.SearchRequest(text="cat", page_size=5))
        await client.search(search_service_pb2.SearchRequest(
            image=image_pb2.Image(content=image), page_size=5))
        return ["OK", "OK", "OK"]

    bad_inputs: list[Callable[[], Awaitable[Any]]] = [
        lambda: client.detect(b"this is not an image"),
        lambda: client.detect(scan_bomb()),
        lambda: client.detect(jpeg, detection_pb2.DetectionOptions(
            model=model_pb2.ModelReference(name="no_such_model"))),
    ]

    async def bad() -> list[str]:
        await rng.choice(bad_inputs)()
        return ["SERVED_A_BAD_INPUT"]  # not in EXPECTED: reported as unexpected

    return {"detect": detect, "embed": embed, "faces": faces, "ocr": ocr, "stream": stream,
            "ingest+search": ingest_search, "bad input": bad}


async def crash_and_restart(holder: dict[str, LocalTriton], log_path: Path, at: float,
                            timeline: Timeline, start: float) -> None:
    """At `at` (monotonic), SIGKILL tritonserver alone (its stubs are left as a crash leaves
    them), clean up what it left, and start it again on the same ports."""
    await asyncio.sleep(max(0.0, at - time.monotonic()))
    old = holder["triton"]
    os.kill(old.pid, signal.SIGKILL)
    timeline.mark("triton killed", start)
    await asyncio.to_thread(stop_process, old.process, 0)  # its stubs and /dev/shm regions
    new = await asyncio.to_thread(
        start_triton, grpc_port=old.grpc_port, http_port=old.http_port,
        metrics_port=old.metrics_port, log_path=log_path)
    holder["triton"] = new
    timeline.mark("triton ready again", start)


async def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    holder = {"triton": launch_triton(work / "triton.log")}
    server = ServerProcess(holder["triton"].grpc_url, work / "server.log",
                           ["--store.path", str(work / "store")])
    try:
        server.wait_serving()
        start = time.monotonic()
        until = start + args.minutes * 60
        outcomes, timeline = Outcomes(start), Timeline()
        memory = Memory(server.pid, lambda: holder.get("triton"), start)
        sampling = asyncio.create_task(memory.run())
        rng = random.Random(1)
        async with VisionClient(server.address, timeout_s=CALL_TIMEOUT_S,
                                stream_timeout_s=STREAM_TIMEOUT_S, retry=NO_RETRY) as client:
            work_items = callers(client, rng)
            await asyncio.gather(
                *(caller(name, call, outcomes, until, rng) for name, call in work_items.items()),
                crash_and_restart(holder, work / "triton.log", start + args.minutes * 30,
                                  timeline, start))
        sampling.cancel()
        return {"minutes": args.minutes, "timeline": timeline.events, "calls": outcomes.rows,
                "memory": memory.rows}
    finally:
        server.stop()
        holder["triton"].stop()


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    """Codes by caller and by phase: before the kill, Triton down (kill to ready), recovery
    (Triton ready to the server's last UNAVAILABLE), after."""
    killed = results["timeline"].get("triton killed", float("inf"))
    back = results["timeline"].get("triton ready again", float("inf"))
    last_unavailable = max((t for t, _, code in results["calls"]
                            if t > back and code.endswith("UNAVAILABLE")), default=back)
    first_ok: dict[str, float] = {}
    phases: dict[str, Counter[str]] = {name: Counter() for name in
                                       ("before", "triton down", "recovery", "after")}
    by_caller: dict[str, Counter[str]] = {}
    for t, name, code in results["calls"]:
        phase = ("before" if t < killed else "triton down" if t < back
                 else "recovery" if t <= last_unavailable else "after")
        phases[phase][code] += 1
        by_caller.setdefault(name, Counter())[code] += 1
        if t > back and code.removeprefix("item:") == "OK":
            first_ok.setdefault(name, t)
    unexpected = {code: n for phase in phases.values() for code, n in phase.items()
                  if code.removeprefix("item:") not in EXPECTED}
    memory = results["memory"]
    # The second minute is the baseline: in the first, Triton's models grow their buffers to
    # the load (about 0.4 -> 2.3 GB).
    minute = max(1, int(60 / SAMPLE_EVERY_S))
    first, last = memory[minute:2 * minute] or memory[:minute], memory[-minute:]
    return {
        "by_phase": {phase: dict(codes) for phase, codes in phases.items()},
        "by_caller": {name: dict(codes) for name, codes in by_caller.items()},
        "last_unavailable_s": round(last_unavailable, 2),
        "first_ok_after_restart_s": first_ok,
        "unexpected": unexpected,
        "server_rss_mib": {"second_minute_mean": _mean(r[1] for r in first),
                           "last_minute_mean": _mean(r[1] for r in last),
                           "max": max(r[1] for r in memory)},
        "triton_pss_mib": {"second_minute_mean": _mean(r[2] for r in first),
                           "last_minute_mean": _mean(r[2] for r in last if r[2] > 0),
                           "max": max(r[2] for r in memory)},
    }


def _mean(values: Any) -> float:
    items = [float(v) for v in values]
    return round(sum(items) / len(items), 1) if items else 0.0


def plot(results: dict[str, Any], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (mem, codes) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    rows = results["memory"]
    mem.plot([r[0] for r in rows], [r[1] for r in rows], label="server RSS")
    mem.plot([r[0] for r in rows], [r[2] for r in rows], label="Triton + stubs PSS")
    mem.set_ylabel("MiB")
    mem.legend(loc="upper left")
    seconds = int(results["minutes"] * 60) + 1
    names = sorted({code.removeprefix("item:") for _, _, code in results["calls"]})
    per_second = {name: [0] * seconds for name in names}
    for t, _, code in results["calls"]:
        per_second[code.removeprefix("item:")][min(int(t), seconds - 1)] += 1
    codes.stackplot(range(seconds), *per_second.values(), labels=list(per_second))
    codes.set_ylabel("calls ending per second")
    codes.set_xlabel("seconds")
    codes.legend(loc="upper left", fontsize=7)
    for row, (name, t) in enumerate(results["timeline"].items()):
        for ax in (mem, codes):
            ax.axvline(t, color="grey", linestyle=":")
        mem.text(t, mem.get_ylim()[1] * (0.9 - 0.1 * row), f" {name}", fontsize=8)
    fig.tight_layout()
    path = out / "soak.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown(results: dict[str, Any], summary: dict[str, Any], command: str) -> str:
    timeline = results["timeline"]
    server, triton = summary["server_rss_mib"], summary["triton_pss_mib"]
    lines = [
        "# Soak: mixed traffic through one Triton kill and restart", "",
        f"Command: `{command}` — one run on this 2-core machine (shared with other work), "
        "server with default settings, real CPU Triton.", "",
        "| figure | value |", "|---|---|",
        f"| Triton SIGKILLed at / ready again at / the server's last UNAVAILABLE | "
        f"{timeline.get('triton killed')} s / {timeline.get('triton ready again')} s / "
        f"{summary['last_unavailable_s']} s |",
        f"| first OK per caller after the restart (s) | {summary['first_ok_after_restart_s']} |",
    ]
    for phase, codes in summary["by_phase"].items():
        lines.append(f"| codes {phase} | {codes} |")
    for name, codes in summary["by_caller"].items():
        lines.append(f"| {name} | {codes} |")
    lines += [
        f"| server RSS second minute / last minute / max | {server['second_minute_mean']} / "
        f"{server['last_minute_mean']} / {server['max']} MiB |",
        f"| Triton + stubs PSS second minute / last minute / max | "
        f"{triton['second_minute_mean']} / {triton['last_minute_mean']} / {triton['max']} MiB |",
        f"| unexpected codes | {summary['unexpected'] or 'none'} |", "",
        "Expected codes: " + "; ".join(f"{code}: {why}" for code, why in EXPECTED.items())
        + ". `item:` codes are the per-image statuses inside upload streams. Phases: before the "
        "kill; Triton down (kill to ready); recovery (Triton ready to the server's last "
        "UNAVAILABLE); after.", "",
        "![memory and codes over time](soak.png)", "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "report")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        results = asyncio.run(run(args, Path(work)))
    summary = summarise(results)
    command = f"python -m bench.soak --minutes {args.minutes:g}"
    (args.out / "soak.json").write_text(
        json.dumps({"summary": summary, **results}, indent=1) + "\n")
    plot(results, args.out)
    (args.out / "soak.md").write_text(markdown(results, summary, command))
    print(markdown(results, summary, command))


if __name__ == "__main__":
    main()
