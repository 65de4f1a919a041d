"""GPU utilisation and memory sampled in the background while bench/gpu runs: through NVML
(the pynvml module of nvidia-ml-py) when it is importable, else from one long-running
`nvidia-smi --loop-ms` process, else not at all (no GPU: every window reads None)."""

from __future__ import annotations

import importlib
import shutil
import statistics
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Any

INTERVAL_S = 0.25


@dataclass(frozen=True)
class Sample:
    at: float  # time.monotonic()
    utilisation_pct: float  # mean over the GPUs
    memory_mib: float  # summed over the GPUs


class GpuSampler:
    """Samples `gpus` GPUs every INTERVAL_S from start() to stop(); window() summarises a span
    of the samples. With no GPU it samples nothing."""

    def __init__(self, gpus: int) -> None:
        self._gpus = gpus
        self._samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._smi: subprocess.Popen[str] | None = None
        self.source = "none"

    def start(self) -> None:
        if not self._gpus:
            return
        nvml = _nvml()
        if nvml is not None:
            self.source = "nvml"
            self._thread = threading.Thread(target=self._poll_nvml, args=(nvml,), daemon=True)
        elif shutil.which("nvidia-smi") is not None:
            self.source = "nvidia-smi"
            self._smi = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                 "--format=csv,noheader,nounits", f"--loop-ms={int(INTERVAL_S * 1000)}"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            self._thread = threading.Thread(target=self._read_smi, daemon=True)
        if self._thread is not None:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._smi is not None:
            self._smi.terminate()
            self._smi.wait(timeout=10)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def window(self, began: float, ended: float) -> dict[str, float] | None:
        """Mean and peak utilisation (%) and peak memory (MiB) of the samples taken between two
        time.monotonic() instants; None when there are none (no GPU, or no sampler)."""
        inside = [s for s in list(self._samples) if began <= s.at <= ended]
        if not inside:
            return None
        return {"utilisation_mean_pct": round(statistics.fmean(s.utilisation_pct
                                                               for s in inside), 1),
                "utilisation_max_pct": max(s.utilisation_pct for s in inside),
                "memory_max_mib": max(s.memory_mib for s in inside),
                "samples": len(inside)}

    def _poll_nvml(self, nvml: Any) -> None:
        nvml.nvmlInit()
        try:
            handles = [nvml.nvmlDeviceGetHandleByIndex(i)
                       for i in range(nvml.nvmlDeviceGetCount())]
            while not self._stop.wait(INTERVAL_S):
                rates = [nvml.nvmlDeviceGetUtilizationRates(h).gpu for h in handles]
                memory = [nvml.nvmlDeviceGetMemoryInfo(h).used for h in handles]
                self._samples.append(Sample(time.monotonic(), statistics.fmean(rates),
                                            sum(memory) / (1 << 20)))
        finally:
            nvml.nvmlShutdown()

    def _read_smi(self) -> None:
        assert self._smi is not None and self._smi.stdout is not None
        rows: list[tuple[float, float]] = []
        for line in self._smi.stdout:
            try:
                utilisation, memory = (float(part) for part in line.split(","))
            except ValueError:
                continue
            rows.append((utilisation, memory))
            # One line per GPU per loop: a loop is complete once every GPU has answered.
            if len(rows) == self._gpus:
                self._samples.append(Sample(time.monotonic(),
                                            statistics.fmean(u for u, _ in rows),
                                            sum(m for _, m in rows)))
                rows = []


def _nvml() -> Any:
    """The pynvml module when it is importable and finds a driver, else None."""
    try:
        nvml = importlib.import_module("pynvml")
        nvml.nvmlInit()
        nvml.nvmlShutdown()
    except Exception:  # noqa: BLE001 (any failure means: no NVML here)
        return None
    return nvml

