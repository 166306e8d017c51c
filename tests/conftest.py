"""Shared fixtures: an isolated MPICLOUD_HOME and a real 2-node local cluster for integration tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def require(program: str, package: str) -> str:
    """Path of a system program; a clear failure naming the Debian package when it is missing."""
    found = shutil.which(program) or (program if Path(program).is_file() else None)
    if not found:
        pytest.fail(f"{program} is missing: install the Debian package {package} (scripts/install-sysdeps.sh)")
    return found


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private MPICLOUD_HOME for one test."""
    path = tmp_path / "mpicloud-home"
    monkeypatch.setenv("MPICLOUD_HOME", str(path))
    return path


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120,
        stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real `mpicloud` CLI in a subprocess."""
    return subprocess.run([sys.executable, "-m", "mpicloud.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout, input=stdin, cwd=ROOT)


@pytest.fixture(scope="session")
def cluster_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MPICLOUD_HOME of the shared session cluster."""
    return tmp_path_factory.mktemp("cluster-home")


@pytest.fixture(scope="session")
def local_cluster(cluster_home: Path) -> Iterator[object]:
    """A real 2-node x 2-slot local cluster (sshd + Open MPI), shared by the integration tests."""
    require("/usr/sbin/sshd", "openssh-server")
    require("mpirun", "openmpi-bin")
    require("mpicc", "libopenmpi-dev")
    from mpicloud.api import Cluster
    from mpicloud.spec import spec_from_dict

    old = os.environ.get("MPICLOUD_HOME")
    os.environ["MPICLOUD_HOME"] = str(cluster_home)
    spec = spec_from_dict({"name": "itest", "cloud": "local", "nodes": 2, "slots_per_node": 2,
                           "local": {"address_base": "127.0.91.1"}})
    cluster = Cluster.up(spec)
    try:
        yield cluster
    finally:
        Cluster.get("itest").down()
        if old is None:
            os.environ.pop("MPICLOUD_HOME", None)
        else:
            os.environ["MPICLOUD_HOME"] = old
