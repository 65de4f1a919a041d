"""The three Python distributions in one fresh environment, as a user installs them: the server
(vision-grpc) and the SDK (vision-client) both depend on the generated code's own distribution
(vision-grpc-api, api/python) and ship none of it, so uninstalling either leaves the other able
to import and to call a server. Wheels are built from copies of the sources (no stale build/
folder in the tree can leak into them); dependencies come through pip's own configuration."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import ROOT, free_port

SOURCES = {"api": ROOT / "api" / "python", "client": ROOT / "clients" / "python"}
# The generated package, as a wheel's RECORD names its files.
GENERATED = "vision/"

# Run inside the fresh environment: ListModels and the health check through the generated stubs
# alone (vision-grpc-api and grpcio), against the server at argv[1].
CALL_WITH_STUBS = """
import sys, grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from vision.v1 import model_service_pb2, model_service_pb2_grpc
with grpc.insecure_channel(sys.argv[1]) as channel:
    health = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(), timeout=60, wait_for_ready=True)
    models = model_service_pb2_grpc.ModelServiceStub(channel).ListModels(
        model_service_pb2.ListModelsRequest(), timeout=30)
print(health_pb2.HealthCheckResponse.ServingStatus.Name(health.status),
      sorted(m.name for m in models.models))
"""

# Run inside the fresh environment: ListModels through the SDK, against the server at argv[1].
CALL_WITH_SDK = """
import asyncio, sys
from vision_client import VisionClient
async def main():
    async with VisionClient(sys.argv[1], timeout_s=30) as client:
        print(sorted(m.name for m in await client.list_models()))
asyncio.run(main())
"""

ABSENT = "import importlib.util, sys; assert importlib.util.find_spec(sys.argv[1]) is None"


async def run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    process = await asyncio.create_subprocess_exec(
        *args, cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 180)
    assert process.returncode == 0, f"{args}: {err.decode()[-2000:]}"
    return out.decode()


def copy_sources(into: Path) -> dict[str, Path]:
    """The three projects' sources, without caches, egg-info or build folders."""
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    copies = {name: into / name for name in ["api", "client", "server"]}
    for name, source in SOURCES.items():
        shutil.copytree(source, copies[name], ignore=skip, symlinks=True)
    shutil.copytree(ROOT / "server", copies["server"] / "server", ignore=skip)
    shutil.copy(ROOT / "pyproject.toml", copies["server"])
    return copies


def fresh_env(venv: Path) -> dict[str, str]:
    """The environment of a process of the fresh venv: none of the repository on its path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, "PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"}


@pytest.mark.triton
async def test_server_and_sdk_share_the_generated_code_and_survive_each_other(
        tmp_path: Path, target: str, triton_url: str) -> None:
    wheels, venv, work = tmp_path / "wheels", tmp_path / "venv", tmp_path / "work"
    work.mkdir()
    copies = copy_sources(tmp_path / "src")
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python")]
    await run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
              "-w", str(wheels), *map(str, copies.values()), cwd=work)
    await run(sys.executable, "-m", "venv", "--without-pip", str(venv), cwd=work)
    install = [*pip, "install", "-q", "--no-compile", "-c", str(ROOT / "requirements" / "dev.lock"),
               "--find-links", str(wheels)]
    await run(*install, "vision-grpc", "vision-client", cwd=work)
    python, env = str(venv / "bin" / "python"), fresh_env(venv)

    # pip tracks the generated files once, under vision-grpc-api.
    owners = await run(python, "-c", (
        "from importlib.metadata import files\n"
        "for dist in ['vision-grpc-api', 'vision-grpc', 'vision-client']:\n"
        f"    print(dist, sum(str(f).startswith({GENERATED!r}) for f in files(dist)))"),
        cwd=work, env=env)
    counts = dict(line.split() for line in owners.splitlines())
    assert int(counts["vision-grpc-api"]) > 0
    assert counts["vision-grpc"] == counts["vision-client"] == "0"

    # Without the SDK, the server still starts from this environment and answers the stubs.
    await run(*pip, "uninstall", "-y", "-q", "vision-client", cwd=work)
    await run(python, "-c", ABSENT, "vision_client", cwd=work, env=env)
    port, log = free_port(), tmp_path / "server.log"
    with log.open("wb") as log_file:
        server = await asyncio.create_subprocess_exec(
            python, "-m", "server", cwd=work, stdout=log_file, stderr=log_file,
            env={**env, "VISION_PORT": str(port), "VISION_METRICS_PORT": "0",
                 "VISION_TRITON__URL": triton_url,
                 "VISION_STORE__PATH": str(tmp_path / "store"),
                 "VISION_DRAIN_DELAY_S": "0", "VISION_GRACE_PERIOD_S": "0"})
    try:
        answer = await run(python, "-c", CALL_WITH_STUBS, f"127.0.0.1:{port}", cwd=work, env=env)
    except AssertionError as failed:
        raise AssertionError(f"{failed}\nserver log:\n{log.read_text()[-3000:]}") from None
    finally:
        server.terminate()
        await asyncio.wait_for(server.wait(), 30)
    status, models = answer.strip().split(" ", 1)
    assert status == "SERVING"
    assert "'yolox_nano'" in models

    # Without the server, the SDK still imports and calls one (the test session's).
    await run(*install, "--no-deps", "vision-client", cwd=work)
    await run(*pip, "uninstall", "-y", "-q", "vision-grpc", cwd=work)
    await run(python, "-c", ABSENT, "server", cwd=work, env=env)
    assert models == (await run(python, "-c", CALL_WITH_SDK, target, cwd=work, env=env)).strip()
