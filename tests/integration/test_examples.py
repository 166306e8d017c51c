"""The shipped examples run for real against the local cluster."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mpicloud.api import Cluster
from tests.conftest import ROOT


def test_regression_example(local_cluster: Cluster, cluster_home: Path, tmp_path: Path) -> None:
    env = {**os.environ, "MPICLOUD_HOME": str(cluster_home), "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, str(ROOT / "examples/regression/regression.py"), "itest", str(tmp_path / "logs")]
    first = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    assert first.stdout.count("PASS") == 3
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["large", "medium", "small"]
    [job_dir] = (tmp_path / "logs" / "large").iterdir()  # logs/<case>/<job id>/, as `mpicloud get` lays it out
    assert sorted(p.name for p in job_dir.iterdir()) == [".mpicloud", "solver.log"]
    second = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0
    assert "input base-build.tar.gz: reused" in second.stdout
