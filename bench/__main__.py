"""`python -m bench` (`make bench`): start Triton and the server on free ports, run every
benchmark, stop both, then write bench/report/results.json, the plots and bench/REPORT.md."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from bench import cpu_path, machine, plots, report
from bench.load import LoadGenerator, RunSpec
from bench.payloads import ROOT
from bench.procs import ServerProcess, launch_triton
from bench.suite import (
    FULL,
    QUICK,
    Budget,
    Env,
    Json,
    batching,
    best_concurrency,
    describe_images,
    gateway,
    generator_ceiling,
    in_process,
    profile,
    server_cost,
    streaming,
    warm_up,
)
from bench.trivial import TEST_REPOSITORY, trivial
from tools.local_triton import LocalTriton

REPORT_DIR = ROOT / "bench" / "report"
REPORT_MD = ROOT / "bench" / "REPORT.md"
VAR_DIR = ROOT / "var"


def log(message: str) -> None:
    print(message, flush=True)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def command_line(argv: Sequence[str]) -> str:
    if os.environ.get("MAKELEVEL"):
        return " ".join(["make bench", *([f"BENCH_ARGS='{' '.join(argv)}'"] if argv else [])])
    return " ".join([".venv/bin/python -m bench", *argv])


PHASES = ("warm_up", "ceiling", "gateway", "in_process", "streaming", "profile", "batching",
          "cpu_path", "server_cost", "trivial")


def run_phases(env: Env, budget: Budget, results: Json, scratch: Path,
               only: str | None = None) -> None:
    def phase(key: str, title: str, body: Callable[[], Any]) -> None:
        if only is not None and key != only:
            return
        log(f"== {title}")
        began = time.monotonic()
        results[key] = body()
        results["phase_s"][key] = round(time.monotonic() - began, 1)
        (VAR_DIR / "bench-partial.json").write_text(json.dumps(results, indent=1))

    address = env.server.address
    phase("warm_up", "warm-up", lambda: warm_up(env, budget))
    phase("ceiling", "load generator ceiling (grpc.health Check)",
          lambda: generator_ceiling(env, budget))
    phase("gateway", "1+3: service vs direct Triton vs a client per request",
          lambda: gateway(env, budget))
    phase("in_process", "2: in-process onnxruntime vs service (at its best concurrency)",
          lambda: in_process(env, budget, best_concurrency(results["gateway"])))
    phase("streaming", "5: stream vs unary / direct", lambda: streaming(env, budget))
    phase("profile", "profile of the server (py-spy)", lambda: {
        "unary": profile(env, budget, "unary", RunSpec(
            "detect", address, "photos", 16, duration_s=budget.profile_s + 1.0)),
        "stream_large": profile(env, budget, "stream-large", RunSpec(
            "stream", address, "large", 1, count=1, workers=1,
            per_stream=max(2, int(budget.profile_s)))),
    })
    phase("batching", "4: Triton batching variants", lambda: batching(env, budget, scratch))
    phase("cpu_path", "CPU path: Triton's time per step and the CPU configuration variants",
          lambda: cpu_path.run(budget.reps, budget.run_s,
                               (4,) if budget == QUICK else (1, 4, 16), scratch / "cpu-path"))
    phase("server_cost", "6: server CPU and RSS (fresh server process)",
          lambda: server_cost(env, budget))
    phase("trivial", "gateway with a trivial model (header_detector) vs direct and a FastAPI peer",
          lambda: trivial(env, budget, budget == QUICK))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="a ~2-minute smoke run (shorter runs, fewer settings)")
    parser.add_argument("--workers", type=int, default=2, help="load-generator processes")
    parser.add_argument("--render-only", action="store_true",
                        help="re-render REPORT.md and the plots from results.json")
    parser.add_argument("--only", choices=PHASES,
                        help="run this phase alone and replace its section in the existing "
                             "results.json (the other sections stay as they were)")
    args = parser.parse_args(argv)
    given = list(argv if argv is not None else sys.argv[1:])
    if args.render_only:
        render(json.loads((REPORT_DIR / "results.json").read_text()))
        return 0
    if args.only and not (REPORT_DIR / "results.json").is_file():
        parser.error("--only merges into bench/report/results.json: run the whole bench first")

    budget = QUICK if args.quick else FULL
    signal.signal(signal.SIGTERM, _interrupt)
    started = time.monotonic()
    VAR_DIR.mkdir(exist_ok=True)
    REPORT_DIR.mkdir(parents=True, exist_ok=True)
    results: Json = {"command": command_line(given), "quick": args.quick,
                     "started_utc": datetime.now(UTC).isoformat(timespec="seconds"),
                     "budget": asdict(budget), "images": describe_images(), "phase_s": {}}
    triton: LocalTriton | None = None
    server: ServerProcess | None = None
    generator: LoadGenerator | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="vision-bench-") as scratch:
            log("== starting Triton, the server and the load generator")
            triton = launch_triton(VAR_DIR / "bench-triton.log",
                                   extra_repositories=(TEST_REPOSITORY,))
            # Admission opened above the highest concurrency measured: the gateway phases
            # compare the cost of serving calls, not load shedding (bench/overload.py
            # measures shedding under the defaults).
            server = ServerProcess(triton.grpc_url, VAR_DIR / "bench-server.log", [
                "--admission.max-in-flight", "256", "--admission.peer-share", "1.0"])
            generator = LoadGenerator(args.workers, VAR_DIR / "bench-workers.log")
            server.wait_serving()
            results["machine"] = machine.describe(triton.version)
            log(f"   Triton {triton.version} pid {triton.pid} at {triton.grpc_url}; server pid "
                f"{server.pid} at {server.address}; {generator.size} generator processes")
            run_phases(Env(generator, server, triton, VAR_DIR, REPORT_DIR, log), budget,
                       results, Path(scratch), args.only)
    except KeyboardInterrupt:
        log("interrupted: stopping what was started")
        return 130
    finally:
        if generator is not None:
            generator.close()
        if server is not None:
            server.stop()
        if triton is not None:
            triton.stop()
    results["machine"]["load_average_end"] = list(os.getloadavg())
    results["wall_s"] = round(time.monotonic() - started, 1)
    if args.only:
        results = merged(json.loads((REPORT_DIR / "results.json").read_text()), results,
                         args.only)
    (REPORT_DIR / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    render(results)
    log(f"done in {time.monotonic() - started:.0f} s: {REPORT_MD.relative_to(ROOT)}, "
        f"{REPORT_DIR.relative_to(ROOT)}/")
    return 0


def merged(previous: Json, run: Json, key: str) -> Json:
    """previous with run's section `key` in place of its own; the run's command, time and
    machine are kept beside it under "partial_runs"."""
    previous[key] = run[key]
    previous["phase_s"][key] = run["phase_s"][key]
    previous.setdefault("partial_runs", {})[key] = {
        name: run[name] for name in ("command", "quick", "started_utc", "wall_s", "machine")}
    return previous


def render(results: Json) -> None:
    images = plots.render_all(results, REPORT_DIR)
    REPORT_MD.write_text(report.markdown(results, [p.relative_to(REPORT_MD.parent)
                                                   for p in images]))
    print(report.console_table(results), flush=True)


if __name__ == "__main__":
    sys.exit(main())
