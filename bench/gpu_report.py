"""bench/report/gpu.md, rendered from gpu.json's results alone."""

from __future__ import annotations

from typing import Any


def _gpu(row: dict[str, Any]) -> str:
    gpu = row.get("gpu")
    if not gpu:
        return "n/a"
    return f"{gpu['utilisation_mean_pct']:.0f} / {gpu['utilisation_max_pct']:.0f}"


def _row(row: dict[str, Any]) -> str:
    head = f"| {row['task']} | {row['in_flight']} |"
    if "skipped" in row or "error" in row:
        return f"{head} {row.get('skipped') or 'failed: ' + row['error']} |||||||"
    busy = row["cores_busy"]
    return (f"{head} {row['images_per_s']:.1f} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | "
            f"{row['errors']} | {_gpu(row)} | {busy['gateway']:.1f} | {busy['triton']:.1f} | "
            f"{busy['generator']:.1f} | {row['bound']} |")


def markdown(results: dict[str, Any]) -> str:
    described = results["machine"]
    gpus = ", ".join(results["gpus"]) or "none (CPU fallback)"
    ort = results["triton_onnxruntime"]
    plan = results["plan"]
    lines = [
        f"# bench/gpu: {'GPU run' if results['mode'] == 'gpu' else 'CPU fallback'}",
        "",
        f"`{results['command']}` ({results['wall_s']:.0f} s in all, setup included): "
        f"{described['cores']} cores ({described['cpu_model']}), GPU: {gpus}; "
        f"Triton {described['triton']}, its onnxruntime {ort['onnxruntime']} on "
        f"{ort['providers']}. Server processes: {plan['server_workers']}, load-generator "
        f"processes: {plan['generators']}; {plan['duration_s']:.0f} s per run after a warm-up "
        f"per task (untimed calls, then {plan['warm_up_s']:.0f} s); images: {results['images']}; "
        f"GPU sampled by {results['gpu_sampler']}.",
        "",
        "Cores busy = CPU seconds of the processes ÷ the run's seconds: the gateway (server "
        "processes), Triton (with its model processes, where images are decoded) and the load "
        "generator. GPU % = utilisation, mean / peak of the samples.",
        "",
        "| task | in flight | images/s | p50 ms | p99 ms | errors | GPU % | cores: gateway | "
        "Triton | generator | bound |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        *(_row(row) for row in results["runs"]),
    ]
    return "\n".join(lines) + "\n"
