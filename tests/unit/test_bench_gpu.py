"""bench/gpu's pure parts: GPU detection through nvidia-smi, the task models' configurations
widened for a GPU box, the verdict on what bounds a run, and the models' provider choice
(triton_models.steps.execution_providers) read from the environment."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from bench.gpu import bound
from bench.gpu_setup import edit_config, gpu_names
from tools.local_triton import MODEL_REPOSITORY
from triton_models.steps import PROVIDERS_ENV, execution_providers


def fake_nvidia_smi(folder: Path, script: str) -> None:
    path = folder / "nvidia-smi"
    path.write_text(f"#!/bin/sh\n{script}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_no_nvidia_smi_means_no_gpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert gpu_names() == []


def test_a_failing_nvidia_smi_means_no_gpu(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    fake_nvidia_smi(tmp_path, "echo 'NVIDIA-SMI has failed' >&2; exit 9")
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert gpu_names() == []


def test_gpus_are_named_as_nvidia_smi_lists_them(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    fake_nvidia_smi(tmp_path, "printf 'NVIDIA H100 80GB HBM3\\n\\n'")
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert gpu_names() == ["NVIDIA H100 80GB HBM3"]


def test_task_config_gets_instances_queue_and_images_per_run() -> None:
    text = (MODEL_REPOSITORY / "yolox_nano" / "configs" / "cpu.pbtxt").read_text()
    edited = edit_config(text, instances=8, queue=1024, per_run=32)
    assert "instance_group [ { kind: KIND_CPU, count: 8 } ]" in edited
    assert "max_queue_size: 1024" in edited and "max_queue_size: 64" not in edited
    assert edited.endswith('parameters { key: "images_per_run" value: { string_value: "32" } }\n')
    again = edit_config(edited, instances=4, queue=512, per_run=16)
    assert again.count('key: "images_per_run"') == 1 and 'string_value: "16" }' in again


def test_a_config_without_a_cpu_instance_group_is_refused() -> None:
    with pytest.raises(ValueError, match="0 CPU instance groups"):
        edit_config("max_queue_size: 64\n", instances=8, queue=1024, per_run=32)


@pytest.mark.parametrize(("gpu", "busy", "expected"), [
    ({"utilisation_mean_pct": 93.0}, {"gateway": 1.0, "triton": 3.0, "generator": 1.0}, "GPU"),
    (None, {"gateway": 3.6, "triton": 5.0, "generator": 1.0}, "gateway"),
    ({"utilisation_mean_pct": 40.0}, {"gateway": 2.0, "triton": 11.0, "generator": 1.0},
     "host CPU (triton 11.0 of 16 cores)"),
    ({"utilisation_mean_pct": 40.0}, {"gateway": 1.0, "triton": 4.0, "generator": 1.0},
     "none saturated"),
])
def test_bound_names_what_limited_the_run(gpu: dict[str, float] | None, busy: dict[str, float],
                                          expected: str) -> None:
    assert bound({"gpu": gpu, "cores_busy": busy}, cores=16, server_workers=4) == expected


def test_models_use_the_cpu_provider_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PROVIDERS_ENV, raising=False)
    assert execution_providers(["CUDAExecutionProvider", "CPUExecutionProvider"]) == [
        "CPUExecutionProvider"]


def test_models_keep_the_named_providers_the_build_has(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PROVIDERS_ENV, "TensorrtExecutionProvider, CUDAExecutionProvider,"
                                      "CPUExecutionProvider")
    # A build without TensorRT: it is dropped, CUDA kept before the CPU.
    assert execution_providers(["CUDAExecutionProvider", "CPUExecutionProvider"]) == [
        "CUDAExecutionProvider", "CPUExecutionProvider"]
    # The CPU build: the CPU provider alone.
    assert execution_providers(["AzureExecutionProvider", "CPUExecutionProvider"]) == [
        "CPUExecutionProvider"]
