"""tools.local_triton stops what it started completely: after Triton is killed with -9 its
Python-backend stubs survive in its process group, and stop() ends them and removes the
/dev/shm regions they used."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

from tests.integration.conftest import ROOT, free_port
from tools.local_triton import SHM_DIR, group_members, shm_regions, start_triton


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
