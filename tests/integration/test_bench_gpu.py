"""bench/gpu on a machine without a GPU: its CPU fallback runs end to end (its own Triton from the
shared .triton-venv, the server, the four tasks) and writes gpu.json and gpu.md, installing
nothing. A few seconds per task; the whole command stays well under a minute here."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tools.local_triton import REPO_ROOT

TASKS = ["detection", "embedding", "faces", "ocr"]
TIMEOUT_S = 240


def test_cpu_fallback_measures_every_task_and_writes_the_report(tmp_path: Path) -> None:
    answer = subprocess.run(
        [str(REPO_ROOT / "bench" / "gpu"), "--duration", "2",
         "--out", str(tmp_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
    assert answer.returncode == 0, answer.stdout[-2000:] + answer.stderr[-2000:]
    assert "no GPU: CPU fallback" in answer.stdout
    results = json.loads((tmp_path / "gpu.json").read_text())
    assert (results["mode"], results["gpus"], results["gpu_sampler"]) == ("cpu", [], "none")
    # The models' own provider choice, read in Triton's environment: nothing asked for CUDA.
    assert results["triton_onnxruntime"]["providers"] == "CPUExecutionProvider"
    assert [(run["task"], run["in_flight"]) for run in results["runs"]] == [
        (task, 2) for task in TASKS]
    for run in results["runs"]:
        assert run["completed"] > 0 and run["errors"] == 0, run
        assert run["images_per_s"] > 0 and 0 < run["p50_ms"] <= run["p99_ms"], run
        assert run["gpu"] is None
        assert set(run["cores_busy"]) == {"gateway", "triton", "generator"}
        assert run["cores_busy"]["triton"] > 0  # the models ran there, not in the gateway
        assert run["bound"]
    table = (tmp_path / "gpu.md").read_text()
    assert "# bench/gpu: CPU fallback" in table
    for task in TASKS:
        assert f"| {task} | 2 | " in table
