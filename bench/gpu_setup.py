"""What bench/gpu prepares on a GPU box before it starts anything: the GPUs the driver lists, a
Triton environment of its own holding onnxruntime's CUDA build (the shared .triton-venv is never
touched), and a copy of model_repository whose four task models run more instances, whole batches
per onnxruntime call and a queue deep enough for hundreds of calls in flight."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from bench.payloads import ROOT
from tools.local_triton import MODEL_REPOSITORY

# The task models the service calls by default; their configs/cpu.pbtxt run the whole task in
# one Python-backend step (the only backend the tritonserver wheel has).
TASK_MODELS = {"detection": "yolox_nano", "embedding": "mobilenet_v2",
               "faces": "yunet_mobilefacenet", "ocr": "ppocr_v6"}
# The tritonserver wheel scripts/bootstrap installs into .triton-venv.
PYTRITON = "nvidia-pytriton==0.7.0"
TRITON_REQUIREMENTS = ROOT / "requirements" / "triton.txt"
GPU_REQUIREMENTS = ROOT / "requirements" / "triton-gpu.txt"
_INSTANCES = re.compile(r"(instance_group \[ \{ kind: KIND_CPU, count: )\d+")
_QUEUE = re.compile(r"max_queue_size: \d+")
_PER_RUN = re.compile(r'(key: "images_per_run"\s*value: \{ string_value: ")\d+')
NVIDIA_SMI_TIMEOUT_S = 30.0


def gpu_names() -> list[str]:
    """The GPUs nvidia-smi lists; none where it is missing or fails (no driver, no device)."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        answer = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                                capture_output=True, text=True, check=True,
                                timeout=NVIDIA_SMI_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in answer.stdout.splitlines() if line.strip()]


def gpu_requirements() -> str:
    """requirements/triton.txt less its onnxruntime pin, then requirements/triton-gpu.txt."""
    kept = [line for line in TRITON_REQUIREMENTS.read_text().splitlines()
            if not line.startswith("onnxruntime")]
    return "\n".join([*kept, GPU_REQUIREMENTS.read_text()])


def gpu_triton_venv(target: Path, wheelhouse: Path | None,
                    log: Callable[[str], None]) -> Path:
    """A venv at `target` with the tritonserver wheel and gpu_requirements(), made once (a stamp
    of what it holds skips the install next time). wheelhouse: install from that folder alone,
    for a box that reaches no package index."""
    requirements = gpu_requirements()
    stamp = hashlib.sha256(f"{PYTRITON}\n{requirements}".encode()).hexdigest()[:16]
    stamp_file = target / ".stamp"
    if stamp_file.is_file() and stamp_file.read_text() == stamp:
        return target
    source = f"wheels in {wheelhouse}" if wheelhouse else "the package index"
    log(f"   Triton's GPU environment in {target}, from {source}")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(target)], check=True)
    pip = [str(target / "bin" / "python"), "-m", "pip", "install", "-q",
           "--disable-pip-version-check",
           *(["--no-index", "--find-links", str(wheelhouse)] if wheelhouse else [])]
    subprocess.run([*pip, "--no-deps", PYTRITON], check=True)
    listed = target / "requirements.txt"
    listed.write_text(requirements)
    subprocess.run([*pip, "-r", str(listed)], check=True)
    stamp_file.write_text(stamp)
    return target


def edit_config(text: str, instances: int, queue: int, per_run: int) -> str:
    """A task model's configs/cpu.pbtxt with `instances` instances, room for `queue` waiting
    requests and `per_run` images per onnxruntime call; ValueError when a setting is missing."""
    text, edits = _INSTANCES.subn(rf"\g<1>{instances}", text)
    if edits != 1:
        raise ValueError(f"{edits} CPU instance groups (one expected)")
    text, edits = _QUEUE.subn(f"max_queue_size: {queue}", text)
    if not edits:
        raise ValueError("no max_queue_size")
    text, edits = _PER_RUN.subn(rf"\g<1>{per_run}", text)
    if not edits:
        text += f'parameters {{ key: "images_per_run" value: {{ string_value: "{per_run}" }} }}\n'
    return text


def gpu_repository(into: Path, instances: int, queue: int, per_run: int) -> Path:
    """A copy of model_repository (ONNX files linked, not copied) whose task models' CPU
    configurations carry edit_config's settings."""
    target = into / "model_repository"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(MODEL_REPOSITORY, target, symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.onnx"))
    for onnx in MODEL_REPOSITORY.glob("*/*/*.onnx"):
        (target / onnx.relative_to(MODEL_REPOSITORY)).symlink_to(onnx.resolve())
    for model in TASK_MODELS.values():
        config = target / model / "configs" / "cpu.pbtxt"
        try:
            config.write_text(edit_config(config.read_text(), instances, queue, per_run))
        except ValueError as err:
            raise ValueError(f"{config}: {err}") from err
    return target
