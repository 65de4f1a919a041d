"""Mutual TLS from every client of ours against the real server (certificates made in the test):
the Python SDK (async and sync), the CLI, the Node client and the Go example each succeed with a
certificate from the server's client CA, and fail with UNAVAILABLE without one or with a
certificate from another CA (the server refuses the handshake)."""

from __future__ import annotations

import asyncio
import shutil
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from server.app import create_server
from server.settings import TlsSettings
from tests.images import PHOTOS, photo
from tests.integration.conftest import settings_for
from tests.integration.test_security import make_pki
from tests.integration.toolchains import build_go_examples, build_node_examples, needs_go, run
from vision_client import NO_RETRY, SyncVisionClient, UnavailableError, VisionClient


@dataclass(frozen=True)
class Files:
    """PEM files: the server's CA, a client pair from it, and a client pair from another CA."""

    ca: Path
    cert: Path
    key: Path
    foreign_cert: Path
    foreign_key: Path

    def python(self, which: str) -> dict[str, Any]:
        """VisionClient's keyword arguments: "own" certificate, "foreign" one, or "none"."""
        pem: dict[str, Any] = {"root_certificates": self.ca.read_bytes()}
        if which != "none":
            cert, key = (self.cert, self.key) if which == "own" else (
                self.foreign_cert, self.foreign_key)
            pem.update(certificate_chain=cert.read_bytes(), private_key=key.read_bytes())
        return pem

    def flags(self, which: str, ca_flag: str = "--ca") -> list[str]:
        """The examples' (and, with --ca-cert, the CLI's) flags for the same three cases."""
        flags = [ca_flag, str(self.ca)]
        if which == "own":
            flags += ["--cert", str(self.cert), "--key", str(self.key)]
        elif which == "foreign":
            flags += ["--cert", str(self.foreign_cert), "--key", str(self.foreign_key)]
        return flags


@dataclass(frozen=True)
class MutualServer:
    target: str
    files: Files


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def mutual(triton_url: str, tmp_path_factory: pytest.TempPathFactory
                 ) -> AsyncIterator[MutualServer]:
    folder = tmp_path_factory.mktemp("pki")
    pki, foreign = make_pki(), make_pki()
    contents = {"ca.pem": pki.ca, "server.pem": pki.server_cert, "server.key": pki.server_key,
                "client.pem": pki.client_cert, "client.key": pki.client_key,
                "foreign.pem": foreign.client_cert, "foreign.key": foreign.client_key}
    for name, content in contents.items():
        (folder / name).write_bytes(content)
    tls = TlsSettings(cert_file=folder / "server.pem", key_file=folder / "server.key",
                      client_ca_file=folder / "ca.pem")
    running = await create_server(settings_for(triton_url).model_copy(update={"tls": tls}))
    await running.health_watcher.checked.wait()
    yield MutualServer(f"127.0.0.1:{running.port}", Files(
        folder / "ca.pem", folder / "client.pem", folder / "client.key",
        folder / "foreign.pem", folder / "foreign.key"))
    await running.stop(grace_s=0)


@pytest.fixture(scope="module")
def one_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    shutil.copy(PHOTOS / "chelsea.png", folder / "chelsea.png")
    return folder


async def test_python_client_presents_its_certificate(mutual: MutualServer) -> None:
    async with VisionClient(mutual.target, 20, retry=NO_RETRY,
                            **mutual.files.python("own")) as client:
        response = await client.detect(photo("chelsea.png"))
    assert response.detections[0].label == "cat"
    for which in ("none", "foreign"):
        async with VisionClient(mutual.target, 20, retry=NO_RETRY,
                                **mutual.files.python(which)) as client:
            with pytest.raises(UnavailableError):
                await client.detect(photo("chelsea.png"))


async def test_sync_client_presents_its_certificate(mutual: MutualServer) -> None:
    def detect(which: str) -> str:
        with SyncVisionClient(mutual.target, timeout_s=20, retry=NO_RETRY,
                              **mutual.files.python(which)) as client:
            try:
                return client.detect(photo("chelsea.png")).detections[0].label
            except UnavailableError:
                return "UNAVAILABLE"
    # Blocking client, in a thread: the server under test runs on this event loop.
    outcomes = [await asyncio.to_thread(detect, which) for which in ("own", "none", "foreign")]
    assert outcomes == ["cat", "UNAVAILABLE", "UNAVAILABLE"]


def test_client_certificate_and_key_go_together() -> None:
    with pytest.raises(ValueError, match="together"):
        VisionClient("127.0.0.1:9", certificate_chain=b"pem")


async def test_cli_presents_its_certificate(mutual: MutualServer) -> None:
    async def cli(which: str) -> int:
        code, _, _ = await run(
            sys.executable, "-m", "vision_client.cli", "--target", mutual.target,
            "--timeout", "20", *mutual.files.flags(which, ca_flag="--ca-cert"), "models",
            timeout_s=120)
        return code
    # 0: success; 3: the call itself failed (exit statuses of the CLI).
    assert [await cli(which) for which in ("own", "none", "foreign")] == [0, 3, 3]


async def test_node_example_presents_its_certificate(mutual: MutualServer,
                                                     one_image: Path) -> None:
    examples = await build_node_examples()
    outcomes = []
    for which in ("own", "none", "foreign"):
        _, out, _ = await run("node", examples / "detect.js", "--target", mutual.target,
                              *mutual.files.flags(which), one_image, timeout_s=120)
        outcomes.append(out.split()[1])
    assert outcomes == ["OK", "UNAVAILABLE", "UNAVAILABLE"]


@needs_go
async def test_go_example_presents_its_certificate(mutual: MutualServer, one_image: Path,
                                                   tmp_path: Path) -> None:
    examples = await build_go_examples(tmp_path / "bin")
    outcomes = []
    for which in ("own", "none", "foreign"):
        _, out, _ = await run(examples / "detect", "--target", mutual.target,
                              *mutual.files.flags(which), one_image, timeout_s=120)
        outcomes.append(out.split()[1])
    assert outcomes == ["OK", "UNAVAILABLE", "UNAVAILABLE"]
