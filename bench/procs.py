"""The processes under test: a real Triton (tools.local_triton) on free ports, optionally from a
temporary copy of model_repository with edited batching, and the vision-grpc server as its own
process; plus what is read from them: CPU time, RSS and Triton's per-model batch counters."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import InferenceServerClient

from bench.payloads import ROOT
from tools.local_triton import (
    BACKEND_DIR,
    MODEL_REPOSITORY,
    TRITON_VENV,
    LocalTriton,
    start_triton,
    stop_process,
)

HOST = "127.0.0.1"
DETECTION_SERVICE = "vision.v1.DetectionService"
# What Triton executes for a detection on the CPU configuration: yolox_nano's configs/cpu.pbtxt
# fuses the ensemble's three steps into one.
STEPS = ("yolox_nano",)
SERVER_READY_TIMEOUT_S = 60.0
SERVER_STOP_GRACE_S = 15.0
_PREFERRED = re.compile(r"\n[ \t]*preferred_batch_size: \[[^\]]*\]")
_DELAY = re.compile(r"max_queue_delay_microseconds: \d+")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class BatchingVariant:
    """Dynamic-batching settings applied to every step of the ensemble."""

    name: str
    max_queue_delay_us: int
    preferred_batch_sizes: tuple[int, ...]

    def apply(self, config: str) -> tuple[str, int]:
        """The config with its dynamic_batching delay and preferred sizes set to the variant's
        (the block's other settings, e.g. its queue policy, kept); how many blocks it edited."""
        text, edits = _DELAY.subn(f"max_queue_delay_microseconds: {self.max_queue_delay_us}",
                                  config)
        text = _PREFERRED.sub("", text)
        if edits and self.preferred_batch_sizes:
            preferred = ", ".join(str(size) for size in self.preferred_batch_sizes)
            text = text.replace("dynamic_batching {",
                                f"dynamic_batching {{\n  preferred_batch_size: [ {preferred} ]", 1)
        return text, edits


def variant_repository(variant: BatchingVariant, into: Path) -> Path:
    """A copy of model_repository whose steps' config.pbtxt and configs/cpu.pbtxt carry the
    variant's batching block (the ONNX file is linked, not copied)."""
    target = into / variant.name
    shutil.copytree(MODEL_REPOSITORY, target, symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.onnx"))
    for onnx in MODEL_REPOSITORY.glob("*/*/*.onnx"):
        (target / onnx.relative_to(MODEL_REPOSITORY)).symlink_to(onnx.resolve())
    for step in STEPS:
        edited = 0
        for config in [target / step / "config.pbtxt", *(target / step / "configs").glob("*")]:
            text, edits = variant.apply(config.read_text())
            if edits > 1:
                raise ValueError(f"{config}: {edits} dynamic_batching delays")
            config.write_text(text)
            edited += edits
        if not edited:  # an ensemble's config.pbtxt has none, its CPU configuration has one
            raise ValueError(f"{step}: no dynamic_batching block to edit")
    return target


def launch_triton(log_path: Path, repository: Path = MODEL_REPOSITORY,
                  wait: bool = True, extra_repositories: tuple[Path, ...] = (),
                  venv: Path = TRITON_VENV, backend_dir: Path = BACKEND_DIR) -> LocalTriton:
    return start_triton(grpc_port=free_port(), http_port=free_port(), metrics_port=free_port(),
                        log_path=log_path, model_repository=repository, wait=wait,
                        extra_repositories=extra_repositories, venv=venv,
                        backend_dir=backend_dir)


def start_process(command: list[str], log_path: Path, cwd: Path = ROOT
                  ) -> subprocess.Popen[bytes]:
    """command in a process (and session) of its own from cwd (the repository root unless
    told), its output appended to log_path; stop it by its pid."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(command, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)


class ListeningProcess:
    """A process listening on a free port of HOST, in a process (and session) of its own, stopped
    by its pid; `command(port)` is what it runs."""

    stop_grace_s = SERVER_STOP_GRACE_S
    name = "server"

    def __init__(self, command: Callable[[int], list[str]], log_path: Path,
                 cwd: Path = ROOT) -> None:
        self.port = free_port()
        self.address = f"{HOST}:{self.port}"
        self.process = start_process(command(self.port), log_path, cwd)
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_until(self, ready: Callable[[], bool], timeout: float) -> None:
        """Until `ready()` (a probe taking about a second at most) is true; RuntimeError when the
        process exits first or `timeout` passes."""
        deadline = time.monotonic() + timeout
        while not ready():
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}; "
                                   f"see {self.log_path}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready after {timeout:.0f} s; "
                                   f"see {self.log_path}")
            time.sleep(0.2)

    def stop(self) -> None:
        """SIGTERM (graceful drain), SIGKILL only after stop_grace_s."""
        stop_process(self.process, self.stop_grace_s)


class ServerProcess(ListeningProcess):
    """`python -m server`."""

    def __init__(self, triton_url: str, log_path: Path, extra: list[str] | None = None) -> None:
        super().__init__(lambda port: [
            sys.executable, "-m", "server", "--host", HOST, "--port", str(port),
            "--triton.url", triton_url, "--triton.health-poll-interval-s", "0.5",
            "--metrics-port", "0", *(extra or [])], log_path)

    def wait_serving(self, timeout: float = SERVER_READY_TIMEOUT_S) -> None:
        """Until grpc.health says SERVING for DetectionService (Triton and the model ready)."""
        request = health_pb2.HealthCheckRequest(service=DETECTION_SERVICE)
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)

            def serving() -> bool:
                try:
                    answer = stub.Check(request, timeout=1.0)
                except grpc.RpcError:
                    return False
                return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)

            self.wait_until(serving, timeout)


@dataclass(frozen=True)
class Usage:
    """CPU seconds (user + system) of a group of processes, and the RSS of the first."""

    cpu_s: float
    rss_bytes: int


class ProcessGroup:
    """Processes read together: a root, and optionally every descendant it has (Triton's
    Python-backend stubs are children of tritonserver)."""

    def __init__(self, pids: list[int], with_children: bool = False) -> None:
        self._processes = [psutil.Process(pid) for pid in pids]
        if with_children:
            self._processes += [child for process in list(self._processes)
                                for child in process.children(recursive=True)]

    def usage(self) -> Usage:
        cpu = 0.0
        for process in self._processes:
            try:
                times = process.cpu_times()
            except psutil.NoSuchProcess:
                continue
            cpu += float(times.user) + float(times.system)
        rss = int(self._processes[0].memory_info().rss) if self._processes else 0
        return Usage(cpu, rss)

    def thread_cpu(self) -> dict[str, float]:
        """CPU seconds of the first process's threads by thread name (/proc/…/task/…/comm);
        its main thread is reported as "main"."""
        root = self._processes[0]
        totals: dict[str, float] = {}
        for thread in root.threads():
            try:
                name = Path(f"/proc/{root.pid}/task/{thread.id}/comm").read_text().strip()
            except OSError:
                continue
            name = "main" if thread.id == root.pid else name
            totals[name] = totals.get(name, 0.0) + float(thread.user_time) \
                + float(thread.system_time)
        return totals


def triton_batch_counters(url: str) -> dict[str, tuple[int, int]]:
    """(inference_count, execution_count) per model: images processed and model executions."""
    client = InferenceServerClient(url=url)
    try:
        stats: Any = client.get_inference_statistics(as_json=True)
    finally:
        client.close()
    return {str(model["name"]): (int(model.get("inference_count", 0)),
                                 int(model.get("execution_count", 0)))
            for model in stats.get("model_stats", [])}


def average_batches(before: dict[str, tuple[int, int]],
                    after: dict[str, tuple[int, int]]) -> dict[str, float]:
    """Average executed batch size per model between two counter readings."""
    batches = {}
    for name, (inferences, executions) in after.items():
        done = inferences - before.get(name, (0, 0))[0]
        runs = executions - before.get(name, (0, 0))[1]
        if runs > 0:
            batches[name] = done / runs
    return batches
