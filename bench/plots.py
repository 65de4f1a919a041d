"""The report's PNG figures (matplotlib, headless), drawn from results.json alone: medians as
points or bars, min–max as error bars."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 (the backend must be chosen first)

from bench.procs import STEPS  # noqa: E402

Json = dict[str, Any]


def _errors(values: list[Json]) -> list[list[float]]:
    return [[v["median"] - v["low"] for v in values], [v["high"] - v["median"] for v in values]]


def _medians(values: list[Json]) -> list[float]:
    return [float(v["median"]) for v in values]


def gateway_throughput(results: Json, out: Path) -> Path:
    arms = results["gateway"]["arms"]
    labels = {"service": "service (DetectObjects)", "direct": "direct Triton, shared client",
              "per_request": "direct Triton, client per request"}
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for arm, label in labels.items():
        concurrencies = [int(c) for c in arms[arm]]
        values = [arms[arm][c]["throughput"] for c in arms[arm]]
        ax.errorbar(concurrencies, _medians(values), yerr=_errors(values), marker="o",
                    capsize=3, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("calls in flight")
    ax.set_ylabel("images / s")
    ax.set_title("Detection throughput (median, min–max)")
    ax.set_ylim(bottom=0)
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, out / "gateway_throughput.png")


def gateway_latency(results: Json, out: Path) -> Path:
    arms = results["gateway"]["arms"]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for arm, style in (("service", "-"), ("direct", "--")):
        concurrencies = [int(c) for c in arms[arm]]
        for figure in ("p50_ms", "p95_ms", "p99_ms"):
            values = [arms[arm][c][figure] for c in arms[arm]]
            ax.errorbar(concurrencies, _medians(values), yerr=_errors(values), linestyle=style,
                        marker="o", capsize=3, label=f"{arm} {figure[:3]}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("calls in flight")
    ax.set_ylabel("latency, ms")
    ax.set_title("Latency: service (solid) vs direct Triton (dashed)")
    ax.legend(ncol=2, fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return _save(fig, out / "gateway_latency.png")


def in_process(results: Json, out: Path) -> Path:
    configs = results["in_process"]["configs"]
    names = list(configs)
    values = [configs[name]["throughput"] for name in names]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    colors = ["tab:gray" if name != "service" else "tab:blue" for name in names]
    ax.bar(names, _medians(values), yerr=_errors(values), capsize=4, color=colors)
    ax.set_ylabel("images / s")
    ax.set_title("In-process onnxruntime settings vs the service")
    ax.tick_params(axis="x", labelrotation=20)
    return _save(fig, out / "in_process.png")


def batching(results: Json, out: Path) -> Path:
    variants = results["batching"]["variants"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, variant in variants.items():
        concurrencies = [int(c) for c in variant["concurrencies"]]
        summaries = list(variant["concurrencies"].values())
        throughput = [s["throughput"] for s in summaries]
        left.errorbar(concurrencies, _medians(throughput), yerr=_errors(throughput),
                      marker="o", capsize=3, label=name)
        onnx = [s["batches"].get(STEPS[0], {"median": 0, "low": 0, "high": 0})
                for s in summaries]
        right.errorbar(concurrencies, _medians(onnx), yerr=_errors(onnx), marker="o",
                       capsize=3, label=name)
    for ax, label in ((left, "images / s (direct Triton)"),
                      (right, f"average executed batch, {STEPS[0]}")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("calls in flight")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    left.legend(fontsize=8)
    fig.suptitle("Dynamic batching variants")
    return _save(fig, out / "batching.png")


def streaming(results: Json, out: Path) -> Path:
    section = results["streaming"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    for ax, case in zip(axes, ("small", "large"), strict=True):
        arms = section[case]["arms"]
        values = [arms[arm]["throughput"] for arm in arms]
        ax.bar(list(arms), _medians(values), yerr=_errors(values), capsize=4,
               color=["tab:blue", "tab:gray"])
        ax.set_title(f"{case} images")
        ax.set_ylabel("images / s")
    fig.suptitle("One upload stream vs unary (small) / direct Triton (large)")
    return _save(fig, out / "streaming.png")


def server_cost(results: Json, out: Path) -> Path:
    section = results["server_cost"]
    chunks = section["chunks"]
    done = [section["chunk_requests"] * (i + 1) for i in range(len(chunks))]
    fig, left = plt.subplots(figsize=(7, 4.2))
    left.plot(done, [c["rss_mib"] for c in chunks], marker="o", color="tab:blue")
    left.set_xlabel("requests served")
    left.set_ylabel("server RSS, MiB", color="tab:blue")
    left.set_ylim(bottom=0)
    right = left.twinx()
    right.plot(done, [c["cpu_s_per_1000"] for c in chunks], marker="s", color="tab:orange")
    right.set_ylabel("server CPU s per 1 000 requests", color="tab:orange")
    right.set_ylim(bottom=0)
    left.set_title("Server process: RSS and CPU over a fresh server's life")
    return _save(fig, out / "server_cost.png")


def profile(results: Json, out: Path) -> Path | None:
    section = results["profile"].get("unary", {})
    if "self_by_bucket" not in section:
        return None
    buckets = dict(list(section["self_by_bucket"].items())[:10])
    fig, ax = plt.subplots(figsize=(8, 4.2))
    ax.barh(list(buckets)[::-1], [100 * v for v in list(buckets.values())[::-1]])
    ax.set_xlabel("% of the server's non-idle Python samples (leaf frame)")
    ax.set_title("Where the server's time goes (unary DetectObjects, py-spy)")
    return _save(fig, out / "profile.png")


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def render_all(results: Json, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    drawn = [gateway_throughput(results, out), gateway_latency(results, out),
             in_process(results, out), batching(results, out), streaming(results, out),
             server_cost(results, out), profile(results, out)]
    return [path for path in drawn if path is not None]
