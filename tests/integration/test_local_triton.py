"""tools.local_triton stops what it started completely: after Triton is killed with -9 its
Python-backend stubs survive in its process group, and stop() ends them and removes the
/dev/shm regions they used; and the next start ends the stubs a killed Triton of the same
model repository left behind."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest

from tests.integration.conftest import ROOT, free_port
from tools.local_triton import (
    SHM_DIR,
    LocalTriton,
    group_members,
    orphaned_stubs,
    shm_regions,
    start_triton,
)


def test_stop_ends_the_process_group_and_removes_shared_memory(tmp_path: Path) -> None:
    repository = tmp_path / "models"
    shutil.copytree(ROOT / "model_repository" / "yolox_postprocess",
                    repository / "yolox_postprocess")
    triton = start_triton(http_port=free_port(), grpc_port=free_port(),
                          metrics_port=free_port(), log_path=tmp_path / "triton.log",
                          model_repository=repository, all_models=True)
    try:
        members = group_members(triton.pid)
        regions = shm_regions(members)
        assert len(members) >= 2 and len(regions) == 1  # Triton and the one model's stub
        assert all((SHM_DIR / name).exists() for name in regions)
        os.kill(triton.pid, signal.SIGKILL)
        triton.process.wait()
        assert group_members(triton.pid)  # the stub outlived Triton
    finally:
        triton.stop(grace=5)
    assert group_members(triton.pid) == []
    assert not any((SHM_DIR / name).exists() for name in regions)


def test_start_ends_the_stubs_a_killed_triton_left_behind(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repository = tmp_path / "models"
    shutil.copytree(ROOT / "model_repository" / "yolox_postprocess",
                    repository / "yolox_postprocess")

    def start() -> LocalTriton:
        # yolox_postprocess serves no task of its own, so only all_models loads it (one stub).
        return start_triton(http_port=free_port(), grpc_port=free_port(),
                            metrics_port=free_port(), log_path=tmp_path / "triton.log",
                            model_repository=repository, all_models=True)

    first = start()
    try:
        stubs = [pid for pid in group_members(first.pid) if pid != first.pid]
        assert len(stubs) == 1
        regions = shm_regions(stubs)
        os.kill(first.pid, signal.SIGKILL)
        first.process.wait()
        assert orphaned_stubs([repository]) == stubs  # parent 1, a region of its own each
        capsys.readouterr()
        second = start()
        try:
            line = capsys.readouterr().err.strip()
            assert line == (f"local_triton: ended 1 Python-backend stub(s) left by a Triton of "
                            f"{repository} that died (pids {stubs[0]}) and removed their "
                            "shared memory")
            assert group_members(first.pid) == []
            assert not any((SHM_DIR / name).exists() for name in regions)
            assert orphaned_stubs([repository]) == []  # the new Triton's stub is its own
            assert len(group_members(second.pid)) == 2
        finally:
            second.stop(grace=5)
    finally:
        first.stop(grace=5)
