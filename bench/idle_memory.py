"""Idle Triton memory on the CPU configuration: PSS summed over tritonserver and its
Python-backend stubs, with every model loaded (the GPU shape's step models too) and with only
the served models (tools.local_triton's default), measured side by side in alternating rounds.

    .venv/bin/python -m bench.idle_memory [--rounds 2]

Prints the figures and writes bench/report/idle_memory.json; bench/REPORT.md quotes them.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import time
from pathlib import Path

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


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.idle_memory", description=__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "report")
    args = parser.parse_args()
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
    (args.out / "idle_memory.json").write_text(json.dumps(
        {"command": ".venv/bin/python -m bench.idle_memory", "settle_s": SETTLE_S,
         "runs": {arm: [{"pss_mib": round(pss, 1), "processes": count} for pss, count in values]
                  for arm, values in runs.items()},
         "median_pss_mib": {arm: round(value, 1) for arm, value in medians.items()},
         "served_over_all": round(ratio, 3)}, indent=2) + "\n")


if __name__ == "__main__":
    main()
