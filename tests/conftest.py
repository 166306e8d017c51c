"""Shared fixtures: an isolated MPICLOUD_HOME and a real 2-node local cluster for integration tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from mpicloud.api import Cluster, Job

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


def wait_running(job: Job, timeout: float = 120) -> None:
    """Until the job runs; a clear failure when it ends first or does not start within `timeout` s."""
    deadline = time.monotonic() + timeout
    while (info := job.info()).state != "running":
        assert not info.done and time.monotonic() < deadline, info
        time.sleep(0.1)


@pytest.fixture(scope="session")
def cluster_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MPICLOUD_HOME of the shared session cluster."""
    return tmp_path_factory.mktemp("cluster-home")


@contextlib.contextmanager
def session_cluster(home: Path, spec: dict[str, object]) -> Iterator[Cluster]:
    """A real local cluster from a spec, in `home` (MPICLOUD_HOME while it lives), removed at the end."""
    from mpicloud.api import Cluster
    from mpicloud.spec import spec_from_dict

    old = os.environ.get("MPICLOUD_HOME")
    os.environ["MPICLOUD_HOME"] = str(home)
    cluster = Cluster.up(spec_from_dict(spec))
    try:
        yield cluster
    finally:
        Cluster.get(str(spec["name"])).down()
        if old is None:
            os.environ.pop("MPICLOUD_HOME", None)
        else:
            os.environ["MPICLOUD_HOME"] = old


@pytest.fixture(scope="session")
def local_cluster(cluster_home: Path) -> Iterator[Cluster]:
    """A real 2-node x 2-slot local cluster (sshd + Open MPI), shared by the integration tests."""
    require("/usr/sbin/sshd", "openssh-server")
    require("mpirun", "openmpi-bin")
    require("mpicc", "libopenmpi-dev")
    with session_cluster(cluster_home, {"name": "itest", "cloud": "local", "nodes": 2, "slots_per_node": 2,
                                        "local": {"address_base": "127.0.91.1"}}) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def slurm_cluster(cluster_home: Path) -> Iterator[Cluster]:
    """A 2-node x 2-CPU namespaced local cluster scheduled by Slurm (root; fails naming the missing package),
    beside `itest` in the session's MPICLOUD_HOME; afterwards none of its namespaces, links or processes is
    left."""
    from tests.slurmlib import ours, processes_with, require_slurm

    require_slurm()
    before = ours()
    with session_cluster(cluster_home, {"name": "slurmtest", "cloud": "local", "nodes": 2, "slots_per_node": 2,
                                        "scheduler": "slurm"}) as cluster:
        cluster_id = cluster.record.local["cluster_id"]
        yield cluster
    assert ours() <= before
    assert processes_with(cluster_id) == []


@dataclass(frozen=True)
class QueueCluster:
    """A session cluster with one of the two queue backends, and the MPICLOUD_HOME the CLI needs for it."""

    cluster: Cluster
    home: Path
    scheduler: str

    @property
    def name(self) -> str:
        return self.cluster.name

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """The real CLI against this cluster's MPICLOUD_HOME."""
        return cli(*args, env={"MPICLOUD_HOME": str(self.home)}, timeout=timeout)


@pytest.fixture(params=["builtin", "slurm"])
def queue_cluster(request: pytest.FixtureRequest, cluster_home: Path) -> QueueCluster:
    """The same queue contract, against the built-in queue and against Slurm."""
    fixture = "slurm_cluster" if request.param == "slurm" else "local_cluster"
    return QueueCluster(request.getfixturevalue(fixture), cluster_home, request.param)
