"""`python -m bench.cpu_path`: where Triton's CPU time goes for detection, and which CPU-path
configuration serves it best, against the same functions run in-process.

Every variant is a temporary copy of the detection models of model_repository (the ONNX file
linked), edited as the variant says, served by a Triton of its own; all of them run at once and
are measured in interleaved rounds with the same direct client (one shared tritonclient.grpc.aio
client, 1/4/16 in flight), next to the in-process reference (the steps' own functions around
onnxruntime, one thread, one image at a time in each of 2 worker processes: the best
in-process setting of bench/REPORT.md section 2) and to the service (a vision-grpc server in
front of the committed configuration's Triton). Per variant and step it reads Triton's
statistics (queue, compute input / infer / output per image) and CPU per process group.

Writes bench/report/cpu_path.json and prints its markdown section (also bench/report/cpu_path.md).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import tempfile
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tritonclient.grpc import InferenceServerClient

from bench.load import LoadGenerator, RunSpec
from bench.measure import Measured, Meter
from bench.payloads import ROOT
from bench.procs import ProcessGroup, ServerProcess, launch_triton
from bench.stats import paired_ratio, spread
from tools.local_triton import MODEL_REPOSITORY, LocalTriton

Json = dict[str, Any]
DETECTION_MODELS = ("yolox_nano", "yolox_preprocess", "yolox_nano_onnx", "yolox_postprocess")
REPORT_DIR = ROOT / "bench" / "report"
_INTRA = re.compile(r'(key: "intra_op_threads"\s*value: \{ string_value: ")\d+(" \})')
_COUNT = re.compile(r"count: \d+")


@dataclass(frozen=True)
class CpuVariant:
    """A CPU configuration of detection: fused or the three-step ensemble, onnxruntime threads,
    instances of the network (or fused) step."""

    name: str
    fused: bool
    intra_op: int
    instances: int

    def describe(self) -> str:
        shape = "one fused step" if self.fused else "ensemble of 3 Python steps"
        return f"{shape}, intra_op {self.intra_op}, {self.instances} instance(s)"


BEFORE = CpuVariant("ensemble_intra2_x1", fused=False, intra_op=2, instances=1)
VARIANTS = (
    BEFORE,
    CpuVariant("ensemble_intra1_x1", fused=False, intra_op=1, instances=1),
    CpuVariant("ensemble_intra1_x2", fused=False, intra_op=1, instances=2),
    CpuVariant("fused_intra1_x1", fused=True, intra_op=1, instances=1),
    CpuVariant("fused_intra1_x2", fused=True, intra_op=1, instances=2),
    CpuVariant("fused_intra2_x1", fused=True, intra_op=2, instances=1),
)
COMMITTED = "fused_intra1_x2"  # what model_repository/yolox_nano/configs/cpu.pbtxt says


def _edit(path: Path, pattern: re.Pattern[str], replacement: str | Callable[..., str]) -> None:
    text, edits = pattern.subn(replacement, path.read_text())
    if edits != 1:
        raise ValueError(f"{path}: expected one match of {pattern.pattern}, found {edits}")
    path.write_text(text)


def variant_repository(variant: CpuVariant, into: Path) -> Path:
    """The detection models only, configured as the variant says."""
    target = into / variant.name
    for model in DETECTION_MODELS:
        shutil.copytree(MODEL_REPOSITORY / model, target / model,
                        ignore=shutil.ignore_patterns("__pycache__", "*.onnx"), symlinks=True)
    for onnx in (MODEL_REPOSITORY / "yolox_nano_onnx").glob("*/*.onnx"):
        (target / onnx.relative_to(MODEL_REPOSITORY)).symlink_to(onnx.resolve())
    fused_config = target / "yolox_nano" / "configs" / "cpu.pbtxt"
    network_config = target / "yolox_nano_onnx" / "configs" / "cpu.pbtxt"
    if variant.fused:
        edited = [fused_config]
    else:
        fused_config.unlink()  # Triton loads the ensemble (config.pbtxt) instead
        edited = [network_config, target / "yolox_preprocess" / "config.pbtxt"]
        _edit(network_config, _INTRA, rf"\g<1>{variant.intra_op}\g<2>")
    if variant.fused:
        _edit(fused_config, _INTRA, rf"\g<1>{variant.intra_op}\g<2>")
    for config in edited:
        _edit(config, _COUNT, f"count: {variant.instances}")
    return target


def step_statistics(url: str) -> dict[str, Json]:
    client = InferenceServerClient(url=url)
    try:
        stats: Any = client.get_inference_statistics(as_json=True)
    finally:
        client.close()
    return {str(model["name"]): model for model in stats.get("model_stats", [])}


def _ns(stats: Json, key: str) -> int:
    return int(stats.get("inference_stats", {}).get(key, {}).get("ns", 0))


def breakdown(before: dict[str, Json], after: dict[str, Json]) -> dict[str, Json]:
    """Per model: images, executions, average batch, and ms per image in queue and compute."""
    table: dict[str, Json] = {}
    for name, now in after.items():
        then = before.get(name, {})
        images = int(now.get("inference_count", 0)) - int(then.get("inference_count", 0))
        runs = int(now.get("execution_count", 0)) - int(then.get("execution_count", 0))
        if images <= 0:
            continue
        row: Json = {"images": images, "executions": runs,
                     "average_batch": round(images / runs, 2) if runs else 0.0}
        for key in ("queue", "compute_input", "compute_infer", "compute_output"):
            row[f"{key}_ms"] = round((_ns(now, key) - _ns(then, key)) / images / 1e6, 3)
        table[name] = row
    return table


def _spread_json(values: list[float]) -> Json:
    s = spread(values)
    return {"median": round(s.median, 3), "low": round(s.low, 3), "high": round(s.high, 3),
            "n": s.n}


def measure(generator: LoadGenerator, tritons: dict[str, LocalTriton], server: ServerProcess,
            reps: int, run_s: float, concurrencies: tuple[int, ...]) -> Json:
    groups = {name: ProcessGroup([t.pid], with_children=True) for name, t in tritons.items()}
    groups["server"] = ProcessGroup([server.pid])
    groups["generator"] = ProcessGroup(generator.pids)
    meter = Meter(generator, groups)
    arms = (*tritons, "service", "in_process")
    runs: dict[str, dict[int, list[Measured]]] = defaultdict(lambda: defaultdict(list))
    steps: dict[str, list[dict[str, Json]]] = defaultdict(list)
    for round_index in range(reps):
        for concurrency in concurrencies:
            shift = round_index % len(arms)
            for arm in arms[shift:] + arms[:shift]:
                if arm == "in_process":
                    spec = RunSpec("inproc", "", "photos", 2, duration_s=run_s, workers=2,
                                   intra_op=1)
                elif arm == "service":
                    spec = RunSpec("detect", server.address, "photos", concurrency,
                                   duration_s=run_s)
                else:
                    spec = RunSpec("triton", tritons[arm].grpc_url, "photos", concurrency,
                                   duration_s=run_s)
                url = tritons[COMMITTED].grpc_url if arm == "service" else \
                    tritons[arm].grpc_url if arm in tritons else None
                before = step_statistics(url) if url else {}
                _, measured = meter.run(spec)
                if url and concurrency == max(concurrencies):
                    steps[arm].append(breakdown(before, step_statistics(url)))
                runs[arm][concurrency].append(measured)
    return summarize(runs, steps, tritons, concurrencies)


def _ratios(arm: list[Measured], reference: list[Measured]) -> Json:
    ratio = paired_ratio([m.throughput for m in arm], [m.throughput for m in reference])
    return {"median": round(ratio.median, 3), "low": round(ratio.low, 3),
            "high": round(ratio.high, 3), "n": ratio.n}


def _median_table(per_round: list[dict[str, Json]]) -> dict[str, Json]:
    """The per-step breakdown of each round, summarised by the median of each figure."""
    rows: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for table in per_round:
        for model, figures in table.items():
            for key, value in figures.items():
                rows[model][key].append(value)
    return {model: {key: round(statistics.median_high(values), 3)
                    for key, values in figures.items()}
            for model, figures in sorted(rows.items())}


def summarize(runs: dict[str, dict[int, list[Measured]]], steps: dict[str, list[dict[str, Json]]],
              tritons: dict[str, LocalTriton], concurrencies: tuple[int, ...]) -> Json:
    section: Json = {"variants": {}, "service": {}, "concurrencies": list(concurrencies),
                     "in_process": {str(c): _spread_json(
                         [m.throughput for m in runs["in_process"][c]]) for c in concurrencies},
                     # the in-process arm runs in the generator's processes: their CPU is its own
                     "in_process_cpu_ms": {str(c): _spread_json(
                         [m.cpu_ms["generator"] for m in runs["in_process"][c]])
                         for c in concurrencies}}
    for arm in (*tritons, "service"):
        rows: Json = {}
        triton_group = COMMITTED if arm == "service" else arm
        for concurrency in concurrencies:
            measured = runs[arm][concurrency]
            rows[str(concurrency)] = {
                "images_per_s": _spread_json([m.throughput for m in measured]),
                "p50_ms": _spread_json([m.p50_ms for m in measured]),
                "over_in_process": _ratios(measured, runs["in_process"][concurrency]),
                "triton_cpu_ms": _spread_json([m.cpu_ms[triton_group] for m in measured]),
                "server_cpu_ms": _spread_json([m.cpu_ms["server"] for m in measured]),
                "generator_cpu_ms": _spread_json([m.cpu_ms["generator"] for m in measured]),
            }
        entry = {"runs": rows, "steps": _median_table(steps.get(arm, []))}
        if arm == "service":
            section["service"] = entry
        else:
            variant = next(v for v in VARIANTS if v.name == arm)
            section["variants"][arm] = {"describe": variant.describe(), **entry}
    section["winner"] = winner(section, concurrencies)
    return section


def winner(section: Json, concurrencies: tuple[int, ...]) -> str:
    """The rule: the variant with the highest median images/s at the highest concurrency among
    those whose p50 at the lowest concurrency is at most 20 % above the best variant's there
    (throughput under load first; a lone call may not pay much for it)."""
    top = str(max(concurrencies))
    low = str(min(concurrencies))
    variants = section["variants"]
    best_p50 = min(v["runs"][low]["p50_ms"]["median"] for v in variants.values())
    allowed = [name for name, v in variants.items()
               if v["runs"][low]["p50_ms"]["median"] <= best_p50 * 1.2]
    return str(max(allowed, key=lambda n: variants[n]["runs"][top]["images_per_s"]["median"]))


def _fig(value: Json) -> str:
    return f"{value['median']:.2f} ({value['low']:.2f}–{value['high']:.2f})"


def accounting(section: Json) -> list[str]:
    """Where the service's CPU per image goes against the in-process arm's, at the highest
    concurrency: on 2 saturated cores throughput is the inverse of the CPU per image, so the
    shares say which part of the gap is Triton's own and which is the gateway's."""
    top = str(max(section["concurrencies"]))
    if "in_process_cpu_ms" not in section:
        return []
    service = section["service"]["runs"][top]
    in_process = section["in_process_cpu_ms"][top]["median"]
    triton = service["triton_cpu_ms"]["median"]
    server = service["server_cpu_ms"]["median"]
    generator = service["generator_cpu_ms"]["median"]
    total = triton + server + generator
    return ["", f"CPU per image at {top} in flight (ms, medians): in-process {in_process:.1f} (the "
            "steps' functions around onnxruntime and nothing else); the service "
            f"{total:.1f} = Triton with its stubs {triton:.1f} + vision-grpc {server:.2f} + the "
            f"load generator {generator:.2f}. On 2 saturated cores throughput goes as the inverse "
            f"of CPU per image, so the service can reach at most {in_process / total:.2f} of "
            f"in-process (measured {service['over_in_process']['median']:.2f}). Of the "
            f"{total - in_process:.1f} ms more per image, {triton - in_process:.1f} "
            f"({(triton - in_process) / total:.0%} of the service's CPU) is Triton's own around "
            "the same functions (its gRPC frontend, scheduler, the Python backend's shared-memory "
            "hand-over to the stub and the stub's Python around execute), "
            f"{server:.2f} ({server / total:.0%}) the gateway, {generator:.2f} the load "
            "generator, which the in-process arm does not have."]


def markdown(section: Json) -> str:
    concurrencies = section["concurrencies"]
    top = str(max(concurrencies))
    lines = ["| variant | " + " | ".join(f"img/s at {c}" for c in concurrencies)
             + f" | ÷ in-process at {top} | Triton CPU ms/img at {top} | p50 ms at 1 |",
             "|---|" + "---|" * (len(concurrencies) + 3)]
    for name, variant in section["variants"].items():
        runs = variant["runs"]
        lines.append(f"| {name} ({variant['describe']}) | " + " | ".join(
            _fig(runs[str(c)]["images_per_s"]) for c in concurrencies)
            + f" | {_fig(runs[top]['over_in_process'])} | {_fig(runs[top]['triton_cpu_ms'])}"
            f" | {_fig(runs[str(min(concurrencies))]['p50_ms'])} |")
    service = section["service"]["runs"]
    lines.append(f"| service (vision-grpc → {COMMITTED}) | " + " | ".join(
        _fig(service[str(c)]["images_per_s"]) for c in concurrencies)
        + f" | {_fig(service[top]['over_in_process'])} | {_fig(service[top]['triton_cpu_ms'])}"
        f" | {_fig(service[str(min(concurrencies))]['p50_ms'])} |")
    lines.append("| in-process (2 workers, intra_op 1) | " + " | ".join(
        _fig(section["in_process"][str(c)]) for c in concurrencies) + " | 1 | | |")
    lines += accounting(section)
    lines += ["", f"Winner by the rule: **{section['winner']}**. Per-step breakdown at {top} in "
              "flight (ms per image; queue = waiting in Triton's scheduler, compute input = "
              "copying inputs into the step, infer = the step's execute, output = copying its "
              "outputs back):", "",
              "| variant | step | avg batch | queue | compute input | compute infer | "
              "compute output |", "|---|---|---|---|---|---|---|"]
    for name, entry in (*section["variants"].items(), ("service", section["service"])):
        for model, row in entry["steps"].items():
            lines.append(f"| {name} | {model} | {row['average_batch']} | {row['queue_ms']} | "
                         f"{row['compute_input_ms']} | {row['compute_infer_ms']} | "
                         f"{row['compute_output_ms']} |")
    return "\n".join(lines)


def run(reps: int, run_s: float, concurrencies: tuple[int, ...], work: Path) -> Json:
    tritons: dict[str, LocalTriton] = {}
    server: ServerProcess | None = None
    generator = LoadGenerator(2, work / "generator.log")
    try:
        for variant in VARIANTS:
            repository = variant_repository(variant, work / "repositories")
            tritons[variant.name] = launch_triton(work / f"triton-{variant.name}.log",
                                                  repository, wait=False)
        for triton in tritons.values():
            triton.wait_ready()
        server = ServerProcess(tritons[COMMITTED].grpc_url, work / "server.log",
                               extra=["--store.path", str(work / "store"),
                                      "--admission.max-in-flight", "64"])
        server.wait_serving()
        for triton in tritons.values():  # warm every variant and the in-process workers
            generator.run(RunSpec("triton", triton.grpc_url, "photos", 4, duration_s=1.0))
        generator.run(RunSpec("inproc", "", "photos", 2, duration_s=1.0, workers=2, intra_op=1))
        generator.run(RunSpec("detect", server.address, "photos", 4, duration_s=1.0))
        return measure(generator, tritons, server, reps, run_s, concurrencies)
    finally:
        generator.close()
        if server is not None:
            server.stop()
        for triton in tritons.values():
            triton.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cpu_path", description=__doc__)
    parser.add_argument("--reps", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--run-s", type=float, default=4.0, help="seconds per run")
    parser.add_argument("--concurrency", type=int, action="append",
                        help="calls in flight (repeatable; default 1, 4, 16)")
    args = parser.parse_args()
    concurrencies = tuple(args.concurrency or (1, 4, 16))
    work = Path(tempfile.mkdtemp(prefix="bench-cpu-path-", dir=ROOT / "var"))
    section = run(args.reps, args.run_s, concurrencies, work)
    section["command"] = (f".venv/bin/python -m bench.cpu_path --reps {args.reps} --run-s "
                          f"{args.run_s}" + "".join(f" --concurrency {c}" for c in concurrencies))
    REPORT_DIR.mkdir(parents=True, exist_ok=True)
    (REPORT_DIR / "cpu_path.json").write_text(json.dumps(section, indent=1))
    text = markdown(section)
    (REPORT_DIR / "cpu_path.md").write_text(text + "\n")
    print(text)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
