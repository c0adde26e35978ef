"""Accelerate runs the same training in two CPU processes (gloo) and keeps them in sync."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def test_two_process_gloo_training_stays_in_sync(tmp_path):
    here = Path(__file__).parent
    env = {**os.environ, "PYTHONPATH": f"{here}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           str(here / "dist_worker.py"), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["num_processes"] == 2 for r in ranks)
    assert all(r["backend"] == "gloo" for r in ranks)
    assert "MULTI_CPU" in ranks[0]["distributed_type"]
    assert ranks[0]["thresholds"] == ranks[1]["thresholds"]
    assert ranks[0]["checksum"] == pytest.approx(ranks[1]["checksum"], rel=1e-9)
