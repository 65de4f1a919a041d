"""Building and running the caller examples from tests: the Go and Node builds, a subprocess run
that leaves the event loop free, and `needs_go`: tests of the Go examples and recipe (Debian's
packages, clients/go/build) skip without Go, except where CI demands it
(VISION_REQUIRE_STUB_TOOLCHAINS=1)."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from tests.integration.conftest import ROOT

needs_go = pytest.mark.skipif(
    shutil.which("go") is None and os.environ.get("VISION_REQUIRE_STUB_TOOLCHAINS") != "1",
    reason="no Go toolchain (the Debian packages are listed in clients/go/build)")

NODE_EXAMPLES = ROOT / "clients" / "node" / "dist" / "examples"


async def run(*command: str | Path, cwd: Path = ROOT, env: dict[str, str] | None = None,
              timeout_s: float = 300) -> tuple[int, str, str]:
    """Runs a command without blocking the event loop (the server under test shares it)."""
    process = await asyncio.create_subprocess_exec(
        *map(str, command), cwd=cwd, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), timeout_s)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def build_go_examples(bin_dir: Path) -> Path:
    code, _, err = await run(ROOT / "clients" / "go" / "build", bin_dir)
    assert code == 0, err
    return bin_dir


async def build_node_examples() -> Path:
    code, out, err = await run(ROOT / "clients" / "node" / "node_modules" / ".bin" / "tsc", "-p",
                               ROOT / "clients" / "node")
    assert code == 0, out + err
    return NODE_EXAMPLES
