"""Run a real tritonserver locally from the `nvidia-pytriton` wheel in `.triton-venv/`.

Used by the integration tests (`start_triton`) and by hand (`python -m tools.local_triton`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

REPO_ROOT = Path(__file__).resolve().parent.parent
TRITON_VENV = REPO_ROOT / ".triton-venv"
BACKEND_DIR = REPO_ROOT / ".triton" / "backends"
MODEL_REPOSITORY = REPO_ROOT / "model_repository"
MODEL_LIBRARY_PARENT = REPO_ROOT  # holds triton_models/, the library every model.py imports
VAR_DIR = REPO_ROOT / "var"
DEFAULT_LOG = VAR_DIR / "triton.log"
PIDFILE = VAR_DIR / "triton.pid"

HOST = "127.0.0.1"
DEFAULT_HTTP_PORT = 4600
DEFAULT_GRPC_PORT = 4601
DEFAULT_METRICS_PORT = 4602
MODEL_CONFIG_NAME = "cpu"
READY_TIMEOUT_S = 180.0
STOP_GRACE_S = 30.0


class TritonError(RuntimeError):
    """The local Triton could not be started, got ready, or stopped."""


@dataclass(frozen=True)
class TritonInstall:
    """Where the wheel put the server, its libraries, the Python backend and its stubs."""

    venv: Path
    site_packages: Path
    python_version: str  # "3.11": picks the stub that matches the Triton venv's interpreter

    @property
    def server(self) -> Path:
        return self.site_packages / "pytriton" / "tritonserver" / "bin" / "tritonserver"

    @property
    def libs(self) -> Path:
        return self.site_packages / "nvidia_pytriton.libs"

    @property
    def python_backend(self) -> Path:
        return self.site_packages / "pytriton" / "tritonserver" / "backends" / "python"

    @property
    def stub(self) -> Path:
        stubs = self.site_packages / "pytriton" / "tritonserver" / "python_backend_stubs"
        return stubs / self.python_version / "triton_python_backend_stub"


def find_install(venv: Path = TRITON_VENV) -> TritonInstall:
    candidates = sorted(venv.glob("lib/python3.*/site-packages"))
    for site_packages in candidates:
        install = TritonInstall(venv, site_packages, site_packages.parent.name[len("python") :])
        if install.server.is_file():
            return install
    raise TritonError(
        f"no tritonserver under {venv}: create it with `python3.11 -m venv .triton-venv`, "
        "`.triton-venv/bin/pip install --no-deps nvidia-pytriton==0.7.0` and "
        "`.triton-venv/bin/pip install -r requirements/triton.txt`"
    )


def _copy_if_changed(source: Path, target: Path) -> None:
    stat = source.stat()
    if target.is_file():
        current = target.stat()
        if current.st_size == stat.st_size and current.st_mtime == stat.st_mtime:
            return
    # Copy then rename: a server already running from this folder keeps its mapped files intact.
    partial = target.with_name(target.name + ".partial")
    shutil.copy2(source, partial)
    partial.replace(target)


def build_backend_dir(install: TritonInstall, backends: Path = BACKEND_DIR) -> Path:
    """Assemble `<backends>/python/`: the wheel's Python backend plus the matching stub.

    The wheel keeps the stubs for every Python apart; Triton looks for the stub beside the
    backend library, so the two are brought together in a folder of our own.
    """
    python_dir = backends / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    sources = [path for path in install.python_backend.iterdir() if path.is_file()]
    for source in [*sources, install.stub]:
        _copy_if_changed(source, python_dir / source.name)
    return backends


def server_environment(install: TritonInstall) -> dict[str, str]:
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        filter(None, [str(install.libs), env.get("LD_LIBRARY_PATH")])
    )
    # The Python-backend stubs take their interpreter's packages from the first Python on PATH:
    # it must be the Triton venv (numpy < 2, OpenCV, onnxruntime), not the server's venv.
    env["PATH"] = os.pathsep.join([str(install.venv / "bin"), env.get("PATH", "")])
    env["VIRTUAL_ENV"] = str(install.venv)
    # glibc's default malloc thresholds stay: fixing the mmap threshold at 128 KiB (every
    # image-sized tensor a mapping of its own, returned when freed) saved tritonserver 32 MiB
    # after an overload but cost the model stubs 4.5 ms of CPU per image in page faults
    # (30.3 -> 25.8 ms per YOLOX image; bench/REPORT.md, CPU path).
    env.pop("PYTHONHOME", None)
    # The models' shared library (triton_models/) is imported from the repository itself, as
    # deploy/triton.Dockerfile puts it on the image's path: one copy, no install to go stale.
    env["PYTHONPATH"] = str(MODEL_LIBRARY_PARENT)
    return env


@dataclass
class LocalTriton:
    """A tritonserver process started by this module; stop it with `stop()` or `with`."""

    process: subprocess.Popen[bytes]
    http_port: int
    grpc_port: int
    metrics_port: int
    log_path: Path
    version: str = field(default="")

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def grpc_url(self) -> str:
        return f"{HOST}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{HOST}:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{HOST}:{self.metrics_port}/metrics"

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Block until Triton and all its models are ready; raise with the log tail otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            code = self.process.poll()
            if code is not None:
                raise TritonError(f"tritonserver exited with {code}\n{log_tail(self.log_path)}")
            if self._http_ok("/v2/health/ready"):
                self.version = self._server_version()
                return
            if time.monotonic() > deadline:
                self.stop()
                raise TritonError(
                    f"tritonserver not ready after {timeout:.0f} s\n{log_tail(self.log_path)}"
                )
            time.sleep(0.25)

    def _http_ok(self, path: str) -> bool:
        try:
            with urllib.request.urlopen(self.http_url + path, timeout=2) as response:
                return int(response.status) == 200
        except (urllib.error.URLError, OSError):
            return False

    def _server_version(self) -> str:
        with urllib.request.urlopen(self.http_url + "/v2", timeout=2) as response:
            metadata = json.load(response)
        return str(metadata.get("version", ""))

    def stop(self, grace: float = STOP_GRACE_S) -> int:
        """SIGTERM, wait for Triton to drain and unload; SIGKILL only after the grace period."""
        return stop_process(self.process, grace)

    def __enter__(self) -> LocalTriton:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "triton_python_backend_shm_region_"


def group_members(pgid: int) -> list[int]:
    """Processes of the process group Triton leads (it starts in a session of its own, so the
    group is Triton and its Python-backend stubs, which outlive a Triton killed with -9)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # After "pid (comm)": state, ppid, pgrp. A zombie is already gone but for its reaping.
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(stat.parent.name))
    return members


def shm_regions(pids: Sequence[int]) -> set[str]:
    """The /dev/shm regions the stubs among pids share with Triton (named in their argv)."""
    regions: set[str] = set()
    for pid in pids:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        regions.update(arg.decode() for arg in argv if arg.startswith(SHM_PREFIX.encode()))
    return regions


def _kill_group(pgid: int, wait_s: float = 5.0) -> None:
    """SIGKILL what is left of the group and wait (briefly) until it is gone."""
    deadline = time.monotonic() + wait_s
    while group_members(pgid) and time.monotonic() < deadline:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.05)


def _remove_regions(regions: set[str]) -> None:
    for name in regions:
        (SHM_DIR / name).unlink(missing_ok=True)


def stop_process(process: subprocess.Popen[bytes], grace: float) -> int:
    """SIGTERM a Triton we started, SIGKILL it only if it outlives the grace period; then its
    whole process group (stubs left behind) and the /dev/shm regions its stubs used."""
    regions = shm_regions(group_members(process.pid))
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    _kill_group(process.pid)
    _remove_regions(regions)
    return process.returncode


def log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


TASK_PARAMETER = re.compile(r'key:\s*"task"')


def model_config(model_dir: Path, config_name: str) -> Path:
    """The config Triton reads for the model: configs/<config_name>.pbtxt, else config.pbtxt."""
    chosen = model_dir / "configs" / f"{config_name}.pbtxt"
    return chosen if chosen.is_file() else model_dir / "config.pbtxt"


def served_models(repository: Path, config_name: str = MODEL_CONFIG_NAME) -> list[str]:
    """The models a request can name: those whose config carries the `task` parameter the
    server's model catalogue reads (server/triton/catalog.py). On the CPU configuration these
    run their networks in their own process, so the step models beside them (the GPU shape's
    ensemble and BLS steps) serve nobody there (bench/report/idle_memory.md)."""
    return sorted(
        config.parent.name if config.name == "config.pbtxt" else config.parent.parent.name
        for config in (model_config(model_dir, config_name)
                       for model_dir in repository.iterdir() if model_dir.is_dir())
        if config.is_file() and TASK_PARAMETER.search(config.read_text())
    )


def start_triton(
    *,
    grpc_port: int = DEFAULT_GRPC_PORT,
    http_port: int = DEFAULT_HTTP_PORT,
    metrics_port: int = DEFAULT_METRICS_PORT,
    log_path: Path = DEFAULT_LOG,
    model_repository: Path = MODEL_REPOSITORY,
    extra_repositories: Sequence[Path] = (),
    model_config_name: str = MODEL_CONFIG_NAME,
    ready_timeout: float = READY_TIMEOUT_S,
    wait: bool = True,
    all_models: bool = False,
) -> LocalTriton:
    """Start tritonserver on 127.0.0.1 and (by default) return once every model is ready.
    extra_repositories are served beside model_repository (e.g. tests/model_repository).
    Only the served models (served_models) are loaded, an ensemble's steps with it, unless
    all_models: the GPU shape's BLS models call steps that Triton cannot know they need."""
    install = find_install()
    backends = build_backend_dir(install)
    log_path = log_path.resolve()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [
        str(install.server),
        f"--model-repository={model_repository.resolve()}",
        *(f"--model-repository={extra.resolve()}" for extra in extra_repositories),
        f"--backend-directory={backends.resolve()}",
        # Models with configs/<name>.pbtxt load that; the others fall back to config.pbtxt.
        f"--model-config-name={model_config_name}",
        *([] if all_models else ["--model-control-mode=explicit", *(
            f"--load-model={name}" for repository in (model_repository, *extra_repositories)
            for name in served_models(repository, model_config_name))]),
        f"--http-address={HOST}",
        f"--http-port={http_port}",
        f"--grpc-address={HOST}",
        f"--grpc-port={grpc_port}",
        f"--metrics-address={HOST}",
        f"--metrics-port={metrics_port}",
        "--strict-readiness=true",
        "--exit-on-error=true",
        # Stay under the grace period of stop(), so in-flight requests finish before a SIGKILL.
        f"--exit-timeout-secs={int(STOP_GRACE_S) - 5}",
    ]
    with log_path.open("ab") as log:
        log.write(f"\n==> {' '.join(command)}\n".encode())
        log.flush()
        # A session of its own: a Ctrl-C in the caller's terminal must not hit Triton directly,
        # so that stop() controls the order of shutdown.
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=server_environment(install),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    triton = LocalTriton(process, http_port, grpc_port, metrics_port, log_path)
    if wait:
        triton.wait_ready(ready_timeout)
    return triton


def _is_tritonserver(pid: int) -> bool:
    """Guard against a stale pidfile whose pid now belongs to another process."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return Path(cmdline.split(b"\0", 1)[0].decode(errors="replace")).name == "tritonserver"


def _stop_pid(pid: int, grace: float) -> None:
    """Like stop_process, for a Triton started by an earlier `start` (known by its pidfile)."""
    regions = shm_regions(group_members(pid))
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _is_tritonserver(pid):
        time.sleep(0.2)
    if _is_tritonserver(pid):
        os.kill(pid, signal.SIGKILL)
    _kill_group(pid)
    _remove_regions(regions)


def _run_foreground(args: argparse.Namespace) -> int:
    stop_requested = threading.Event()

    def request_stop(signum: int, frame: object) -> None:
        stop_requested.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    triton = _start_from_args(args)
    print(f"Triton {triton.version} ready: gRPC {triton.grpc_url}, HTTP {triton.http_url}")
    while not stop_requested.is_set() and triton.process.poll() is None:
        stop_requested.wait(0.5)
    if triton.process.poll() is not None:
        print(f"tritonserver exited by itself\n{log_tail(triton.log_path)}", file=sys.stderr)
        return 1
    return triton.stop()


def _start_from_args(args: argparse.Namespace) -> LocalTriton:
    start = time.monotonic()
    triton = start_triton(
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
        log_path=args.log,
        model_repository=args.model_repository,
        extra_repositories=args.extra_repository,
        model_config_name=args.model_config_name,
        ready_timeout=args.timeout,
        all_models=args.all_models,
    )
    print(f"ready in {time.monotonic() - start:.1f} s (log: {triton.log_path})")
    return triton


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.local_triton", description=__doc__)
    parser.add_argument(
        "command",
        choices=["run", "start", "stop"],
        help="run: foreground until SIGINT/SIGTERM; start: background + pidfile; stop: pidfile",
    )
    parser.add_argument("--http-port", type=int, default=DEFAULT_HTTP_PORT)
    parser.add_argument("--grpc-port", type=int, default=DEFAULT_GRPC_PORT)
    parser.add_argument("--metrics-port", type=int, default=DEFAULT_METRICS_PORT)
    parser.add_argument("--model-repository", type=Path, default=MODEL_REPOSITORY)
    parser.add_argument("--extra-repository", type=Path, action="append", default=[],
                        help="another model repository to serve too (repeatable)")
    parser.add_argument("--model-config-name", default=MODEL_CONFIG_NAME)
    parser.add_argument("--all-models", action="store_true",
                        help="load every model, step models too (default: the served ones)")
    parser.add_argument("--log", type=Path, default=DEFAULT_LOG)
    parser.add_argument("--pidfile", type=Path, default=PIDFILE)
    parser.add_argument("--timeout", type=float, default=READY_TIMEOUT_S, help="seconds to ready")
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            return _run_foreground(args)
        if args.command == "start":
            if args.pidfile.is_file() and _is_tritonserver(int(args.pidfile.read_text())):
                print(f"already running (pid {args.pidfile.read_text().strip()})", file=sys.stderr)
                return 1
            triton = _start_from_args(args)
            args.pidfile.parent.mkdir(parents=True, exist_ok=True)
            args.pidfile.write_text(f"{triton.pid}\n")
            print(f"Triton {triton.version} pid {triton.pid}: gRPC {triton.grpc_url}")
            return 0
        if not args.pidfile.is_file():
            print(f"no pidfile at {args.pidfile}", file=sys.stderr)
            return 1
        pid = int(args.pidfile.read_text())
        if _is_tritonserver(pid):
            _stop_pid(pid, STOP_GRACE_S)
        args.pidfile.unlink()
        return 0
    except TritonError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
