"""Idle Triton memory on the CPU configuration: PSS summed over tritonserver and its
Python-backend stubs, with every model loaded (the GPU shape's step models too) and with only
the served models (tools.local_triton's default), measured side by side in alternating rounds.

    .venv/bin/python -m bench.idle_memory [--rounds 2] [--render]

Prints the figures and writes bench/report/idle_memory.json and bench/report/idle_memory.md
(`--render`: the markdown again from the JSON, measuring nothing).
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import time
from pathlib import Path
from typing import Any

from bench.payloads import ROOT
from tools.local_triton import group_members, start_triton

SETTLE_S = 5.0  # after ready: model initialisers done, nothing in flight
MIB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def pss_bytes(pid: int) -> int:
    """The process's proportional set size (what psutil's memory_full_info().pss reads): its
    private pages plus its share of pages mapped by several processes."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    raise ValueError(f"no Pss in /proc/{pid}/smaps_rollup")


def idle_pss(all_models: bool, log_path: Path) -> tuple[float, int]:
    """(PSS in MiB summed over the process group, number of processes) of an idle Triton."""
    triton = start_triton(http_port=free_port(), grpc_port=free_port(),
                          metrics_port=free_port(), log_path=log_path, all_models=all_models)
    try:
        time.sleep(SETTLE_S)
        members = group_members(triton.pid)
        return sum(pss_bytes(pid) for pid in members) / MIB, len(members)
    finally:
        triton.stop()


ARMS = {"all models": "every model (the GPU shape's step models too)",
        "served models": "the served models only (tools/local_triton.py's default)"}


def markdown(result: dict[str, Any]) -> str:
    rows = []
    for arm, runs in result["runs"].items():
        rounds = ", ".join(f"{run['pss_mib']:.0f}" for run in runs)
        rows.append(f"| {ARMS[arm]} | {runs[0]['processes']} | {rounds} | "
                    f"{result['median_pss_mib'][arm]:.0f} |")
    return "\n".join([
        "# Idle Triton memory on the CPU configuration", "",
        "PSS (each process's private pages plus its share of shared ones, from "
        "/proc/PID/smaps_rollup) summed over tritonserver and its Python-backend stubs, "
        f"{result['settle_s']:.0f} s after ready, no request sent; the two arms alternate, "
        f"medians. Command: `{result['command']}` (idle_memory.json beside this file).", "",
        "| Triton loads | processes | PSS (MiB), rounds | median |", "|---|---|---|---|", *rows, "",
        f"Served ÷ every model: {result['served_over_all']:.2f}. The entry models (yolox_nano, "
        "mobilenet_v2, yunet_mobilefacenet, ppocr_v6) run their networks in their own process "
        "on the CPU configuration, so the step models of the GPU shape and their stubs serve "
        "no request there.", "",
    ])


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.idle_memory", description=__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "report")
    parser.add_argument("--render", action="store_true",
                        help="write idle_memory.md from idle_memory.json, measuring nothing")
    args = parser.parse_args()
    if args.render:
        (args.out / "idle_memory.md").write_text(
            markdown(json.loads((args.out / "idle_memory.json").read_text())))
        return
    log_path = ROOT / "var" / "bench-idle-memory-triton.log"
    log_path.parent.mkdir(exist_ok=True)
    runs: dict[str, list[tuple[float, int]]] = {"all models": [], "served models": []}
    for _ in range(args.rounds):
        for arm, all_models in (("all models", True), ("served models", False)):
            runs[arm].append(idle_pss(all_models, log_path))
            print(f"{arm}: {runs[arm][-1][0]:.0f} MiB PSS in {runs[arm][-1][1]} processes")
    medians = {arm: statistics.median(pss for pss, _ in values) for arm, values in runs.items()}
    ratio = medians["served models"] / medians["all models"]
    print(f"median: all {medians['all models']:.0f} MiB, served {medians['served models']:.0f} "
          f"MiB, served / all {ratio:.2f}")
    args.out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "command": ".venv/bin/python -m bench.idle_memory", "settle_s": SETTLE_S,
        "runs": {arm: [{"pss_mib": round(pss, 1), "processes": count} for pss, count in values]
                 for arm, values in runs.items()},
        "median_pss_mib": {arm: round(value, 1) for arm, value in medians.items()},
        "served_over_all": round(ratio, 3)}
    (args.out / "idle_memory.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "idle_memory.md").write_text(markdown(result))


if __name__ == "__main__":
    main()
