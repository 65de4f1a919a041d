"""`bench/gpu` (python -m bench.gpu): the service end to end on one GPU box. It puts onnxruntime's
CUDA build into a Triton environment of its own (bench.gpu_setup), starts Triton with the task
models' CPU configurations widened for the box (the tritonserver wheel has the Python backend
only: the models' steps run onnxruntime on the providers VISION_ORT_PROVIDERS names), starts the
server, and runs detection, embedding, faces and OCR at 64, 256 and 512 calls in flight for a
bounded time each. Per run: images/s, p50/p99, errors, GPU utilisation and memory, and the cores
busy in the gateway, in Triton (with its model processes) and in the load generator, which say
what bounds the figure. Written to <out>/gpu.json and <out>/gpu.md.

Without a GPU (no nvidia-smi, or it finds none) it runs its CPU fallback: the shared .triton-venv
and model_repository as they are, nothing installed, two calls in flight, a few seconds a task.

    bench/gpu [--duration S] [--in-flight N [N ...]] [--tasks detection ...] [--out DIR]
              [--wheelhouse DIR] [--tensorrt] [--budget-s S]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from bench import machine
from bench.gpu_report import markdown
from bench.gpu_sampler import GpuSampler
from bench.gpu_setup import TASK_MODELS, gpu_names, gpu_repository, gpu_triton_venv
from bench.load import LoadGenerator, LoadGeneratorError, RunSpec
from bench.payloads import ROOT, PayloadName
from bench.procs import ProcessGroup, ServerProcess, launch_triton
from bench.targets import TargetKind
from tools.local_triton import (
    BACKEND_DIR,
    MODEL_REPOSITORY,
    TRITON_VENV,
    find_install,
    server_environment,
)
from triton_models.steps import PROVIDERS_ENV

VAR_DIR = ROOT / "var"
GPU_DIR = VAR_DIR / "gpu"  # the GPU Triton environment, kept between runs
KINDS: dict[str, TargetKind] = {"detection": "detect", "embedding": "embed", "faces": "faces",
                                "ocr": "ocr"}
CUDA_PROVIDERS = "CUDAExecutionProvider,CPUExecutionProvider"
TENSORRT_PROVIDERS = "TensorrtExecutionProvider," + CUDA_PROVIDERS
IMAGES_PER_RUN = 32  # the task models' max_batch_size: a GPU gains from whole batches
# Whole run, setup included, stays inside this; runs that would end past it are skipped.
GPU_BUDGET_S = 480.0
CPU_BUDGET_S = 120.0
RUN_MARGIN_S = 3.0  # a run's start margin and the merge of its workers' results
WARM_UP_CALLS_PER_SLOT = 2  # untimed warm-up calls per call in flight, before any timed run
# What the providers probe prints: onnxruntime's version, then the providers a session got.
PROBE = ("import sys, onnxruntime; from pathlib import Path; "
         "from triton_models.steps import onnx_session; print(onnxruntime.__version__); "
         "print(','.join(onnx_session(Path(sys.argv[1]), 1).get_providers()))")


@dataclass(frozen=True)
class Plan:
    """How hard and how long: the defaults of a mode, then the command line's overrides."""

    mode: Literal["gpu", "cpu"]
    in_flight: tuple[int, ...]
    duration_s: float
    warm_up_s: float
    server_workers: int  # server processes sharing the port
    generators: int  # load-generator processes
    instances: int  # per task model in Triton (GPU mode; the CPU fallback keeps its configs')
    budget_s: float


# 16 cores: 4 gateway processes, 4 load-generator processes, the rest for Triton's decoding.
GPU_PLAN = Plan("gpu", (64, 256, 512), 15.0, 5.0, 4, 4, 8, GPU_BUDGET_S)
CPU_PLAN = Plan("cpu", (2,), 3.0, 0.0, 1, 1, 2, CPU_BUDGET_S)


def log(message: str) -> None:
    print(message, flush=True)


def plan_for(args: argparse.Namespace, gpus: list[str]) -> Plan:
    plan = GPU_PLAN if gpus else CPU_PLAN
    overrides: dict[str, Any] = {}
    if args.in_flight:
        overrides["in_flight"] = tuple(args.in_flight)
    for name in ("duration_s", "warm_up_s", "server_workers", "generators", "instances",
                 "budget_s"):
        value = getattr(args, name)
        if value is not None:
            overrides[name] = value
    return replace(plan, **overrides)


def probe_providers(venv: Path, repository: Path) -> dict[str, str]:
    """onnxruntime's version in Triton's environment and the providers a detection network's
    session gets there, made as the models make theirs (triton_models.steps.onnx_session, with
    the environment Triton gets)."""
    install = find_install(venv)
    answer = subprocess.run([str(venv / "bin" / "python"), "-c", PROBE,
                             str(repository / "yolox_nano_onnx" / "1" / "model.onnx")],
                            env=server_environment(install), capture_output=True, text=True,
                            check=False, timeout=300)
    lines = answer.stdout.split()
    if answer.returncode != 0 or len(lines) < 2:
        last = (answer.stderr.strip().splitlines() or ["no output"])[-1]
        return {"onnxruntime": "unknown", "providers": f"probe failed: {last}"}
    return {"onnxruntime": lines[0], "providers": lines[-1]}


def cores_busy(groups: dict[str, ProcessGroup], before: dict[str, float],
               seconds: float) -> dict[str, float]:
    return {name: round((group.usage().cpu_s - before[name]) / seconds, 2)
            for name, group in groups.items()}


def bound(row: dict[str, Any], cores: int, server_workers: int) -> str:
    """What limited a run: the GPU when it was busy most of the time; else the gateway when its
    processes used nearly a core each (one event loop each); else the host's cores when nearly
    all were busy (named by their biggest user); else nothing saturated (more calls in flight
    would go faster)."""
    gpu = row.get("gpu")
    busy: dict[str, float] = row["cores_busy"]
    if gpu and gpu["utilisation_mean_pct"] >= 85:
        return "GPU"
    if busy["gateway"] >= 0.85 * server_workers:
        return "gateway"
    if sum(busy.values()) >= 0.85 * cores:
        top = max(busy, key=lambda name: busy[name])
        return f"host CPU ({top} {busy[top]:.1f} of {cores} cores)"
    return "none saturated"


def measure(args: argparse.Namespace, plan: Plan, gpus: list[str], began: float,
            scratch: Path) -> dict[str, Any]:
    venv, repository, backend_dir = TRITON_VENV, MODEL_REPOSITORY, BACKEND_DIR
    if gpus:
        venv = gpu_triton_venv(GPU_DIR / "triton-venv", args.wheelhouse, log)
        backend_dir = GPU_DIR / "backends"
        repository = gpu_repository(scratch, plan.instances, 2 * max(plan.in_flight),
                                    IMAGES_PER_RUN)
        os.environ[PROVIDERS_ENV] = TENSORRT_PROVIDERS if args.tensorrt else CUDA_PROVIDERS
        if args.tensorrt:  # engines built once, kept beside the environment, FP16 allowed
            os.environ["ORT_TENSORRT_ENGINE_CACHE_ENABLE"] = "1"
            os.environ["ORT_TENSORRT_CACHE_PATH"] = str(GPU_DIR / "tensorrt-engines")
            os.environ["ORT_TENSORRT_FP16_ENABLE"] = "1"
    providers = probe_providers(venv, repository)
    log(f"   Triton's onnxruntime {providers['onnxruntime']}: {providers['providers']}")
    log("== Triton")
    triton = launch_triton(scratch / "triton.log", repository, venv=venv,
                           backend_dir=backend_dir)
    server = ServerProcess(triton.grpc_url, scratch / "server.log", [
        "--workers", str(plan.server_workers), "--store.path", str(scratch / "store"),
        # above the calls in flight: the run measures serving, not shedding
        "--admission.max-in-flight", str(2 * max(plan.in_flight)),
        "--admission.peer-share", "1.0"])
    generator = LoadGenerator(plan.generators, scratch / "generator.log")
    sampler = GpuSampler(len(gpus))
    rows: list[dict[str, Any]] = []
    try:
        server.wait_serving()
        log(f"== server ({plan.server_workers} processes) ready at "
            f"{time.monotonic() - began:.0f} s")
        groups = {"gateway": ProcessGroup([server.pid], with_children=True),
                  "triton": ProcessGroup([triton.pid], with_children=True),
                  "generator": ProcessGroup(generator.pids)}
        sampler.start()
        cores = len(os.sched_getaffinity(0))
        for task in args.tasks:
            rows += run_task(task, plan, args.images, server.address, generator, groups,
                             sampler, began, cores)
        described = machine.describe(triton.version)
    finally:
        sampler.stop()
        generator.close()
        server.stop()
        triton.stop()
    return {"mode": plan.mode, "gpus": gpus, "gpu_sampler": sampler.source,
            "plan": {**plan.__dict__, "in_flight": list(plan.in_flight)},
            "images": args.images, "triton_onnxruntime": providers,
            "machine": described, "runs": rows}


def run_task(task: str, plan: Plan, images: PayloadName, address: str,
             generator: LoadGenerator, groups: dict[str, ProcessGroup], sampler: GpuSampler,
             began: float, cores: int) -> list[dict[str, Any]]:
    kind = KINDS[task]
    rows: list[dict[str, Any]] = []
    log(f"== {task} ({TASK_MODELS[task]})")
    warm_calls = WARM_UP_CALLS_PER_SLOT * max(plan.in_flight)
    try:
        # A count first: the models make their sessions at their first call, which can take
        # longer than a timed window; then, if asked, a timed run to reach a steady state.
        generator.run(RunSpec(kind, address, images, max(plan.in_flight), count=warm_calls))
        if plan.warm_up_s > 0:
            generator.run(RunSpec(kind, address, images, max(plan.in_flight),
                                  duration_s=plan.warm_up_s))
    except LoadGeneratorError as err:
        log(f"   warm-up failed: {err}")
        return [{"task": task, "in_flight": n, "error": str(err)[:300]}
                for n in plan.in_flight]
    for in_flight in plan.in_flight:
        row: dict[str, Any] = {"task": task, "in_flight": in_flight}
        rows.append(row)
        if time.monotonic() - began + plan.duration_s + RUN_MARGIN_S > plan.budget_s:
            row["skipped"] = f"past the {plan.budget_s:.0f} s budget"
            log(f"   {in_flight:>4} in flight: skipped (budget)")
            continue
        before = {name: group.usage().cpu_s for name, group in groups.items()}
        start = time.monotonic()
        try:
            run = generator.run(RunSpec(kind, address, images, in_flight,
                                        duration_s=plan.duration_s))
        except LoadGeneratorError as err:
            row["error"] = str(err)[:300]
            log(f"   {in_flight:>4} in flight: failed: {err}")
            continue
        end = time.monotonic()
        row.update({"images_per_s": round(run.throughput, 1), "p50_ms": round(run.p50_ms, 2),
                    "p99_ms": round(run.p99_ms, 2), "completed": run.completed,
                    "errors": run.errors, "first_error": run.first_error,
                    "cores_busy": cores_busy(groups, before, end - start),
                    "gpu": sampler.window(start, end)})
        row["bound"] = bound(row, cores, plan.server_workers)
        log(f"   {in_flight:>4} in flight: {row['images_per_s']:>8.1f} images/s, "
            f"p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms, {run.errors} errors; "
            f"bound: {row['bound']}")
    return rows


def command_line(argv: Sequence[str]) -> str:
    return " ".join(["bench/gpu", *argv])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/gpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", dest="duration_s", type=float,
                        help="seconds per run (GPU 15, CPU fallback 3)")
    parser.add_argument("--warm-up", dest="warm_up_s", type=float,
                        help="timed warm-up per task after the untimed calls (GPU 5 s, CPU 0)")
    parser.add_argument("--in-flight", type=int, nargs="+",
                        help="calls in flight, one run each (GPU 64 256 512, CPU fallback 2)")
    parser.add_argument("--tasks", nargs="+", choices=list(KINDS), default=list(KINDS))
    parser.add_argument("--images", choices=["small", "photos"], default="small",
                        help="small: one 512x512 JPEG of ~50 KB; photos: the test photos")
    parser.add_argument("--server-workers", type=int, help="server processes (GPU 4, CPU 1)")
    parser.add_argument("--generators", type=int, help="load-generator processes (GPU 4, CPU 1)")
    parser.add_argument("--instances", type=int,
                        help="instances per task model in Triton (GPU only; default 8)")
    parser.add_argument("--budget-s", type=float,
                        help="the whole run's time limit, setup included (GPU 480, CPU 120)")
    wheelhouse = os.environ.get("VISION_WHEELHOUSE")
    parser.add_argument("--wheelhouse", type=Path, default=Path(wheelhouse) if wheelhouse else None,
                        help="install Triton's GPU environment from this folder of wheels only "
                        "(default: $VISION_WHEELHOUSE)")
    parser.add_argument("--tensorrt", action="store_true",
                        help="TensorRT first where onnxruntime can load it, then CUDA")
    parser.add_argument("--cpu", action="store_true", help="the CPU fallback even with a GPU")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "report",
                        help="where gpu.json and gpu.md go")
    args = parser.parse_args(argv)
    began = time.monotonic()
    gpus = [] if args.cpu else gpu_names()
    plan = plan_for(args, gpus)
    log(f"== {'GPU: ' + ', '.join(gpus) if gpus else 'no GPU: CPU fallback'}; "
        f"in flight {list(plan.in_flight)}, {plan.duration_s:.0f} s per run")
    VAR_DIR.mkdir(exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="bench-gpu-", dir=VAR_DIR))
    try:
        results = measure(args, plan, gpus, began, scratch)
    except Exception:
        log(f"logs kept in {scratch}")
        raise
    shutil.rmtree(scratch, ignore_errors=True)
    results["command"] = command_line(argv if argv is not None else sys.argv[1:])
    results["wall_s"] = round(time.monotonic() - began, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / "gpu.md").write_text(markdown(results))
    log(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
