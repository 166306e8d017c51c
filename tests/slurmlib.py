"""Helpers for the tests against the real local Slurm cluster (root): package checks and leak checks."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.conftest import require

if TYPE_CHECKING:
    from mpicloud.api import Cluster


def require_slurm() -> None:
    """Fail (never skip) naming what to install when the Slurm tests cannot run here."""
    if os.geteuid() != 0:
        pytest.fail("the Slurm local-cluster tests run as root (namespaces, Slurm daemons)")
    for program, package in (("slurmctld", "slurmctld"), ("slurmd", "slurmd"), ("sbatch", "slurm-client"),
                             ("munged", "munge"), ("nsenter", "util-linux"), ("ip", "iproute2"),
                             ("mpicc", "libopenmpi-dev")):
        require(program, package)
    if not list(Path("/usr/lib").glob("*/libpmix.so")):
        pytest.fail("libpmix.so is missing: install the Debian package libpmix-dev")


def ours() -> set[str]:
    """Every namespace, interface (prefix mpc) and /run directory a local cluster could own."""
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    names = {line.split()[0] for line in netns.splitlines() if line.strip()}
    names |= {line.split(":")[1].strip().split("@")[0] for line in links.splitlines()}
    return {n for n in names if n.startswith("mpc")} | {p.name for p in Path("/run").glob("mpicloud-[0-9a-f]*")}


def processes_with(text: str) -> list[int]:
    """PIDs whose environment or command line mentions `text` (a test's own MPICLOUD_HOME, a cluster id)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            blob = (entry / "environ").read_bytes() + (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if text.encode() in blob and state != "Z":
            found.append(int(entry.name))
    return found


def slurm_records(cluster: Cluster) -> list[dict[str, str]]:
    """Slurm's own record of every finished job of a local Slurm cluster (jobcomp.txt, one line per job)."""
    path = Path(cluster.record.local["slurm_conf"]).parent / "jobcomp.txt"
    lines = path.read_text().splitlines() if path.exists() else []
    return [dict(f.split("=", 1) for f in line.split() if "=" in f) for line in lines]


def slurm_record(cluster: Cluster, slurm_id: str, timeout: float = 20) -> dict[str, str]:
    """One finished Slurm job's record (array tasks: `ARRAYID_TASK`), waited for: slurmctld writes it as the job
    ends, which may be a moment after the runner saw the job's end."""
    deadline = time.monotonic() + timeout
    while True:
        for row in slurm_records(cluster):
            task = f"{row.get('ArrayJobId')}_{row.get('ArrayTaskId')}"
            if row["JobId"] == slurm_id or ("ArrayJobId" in row and task == slurm_id):
                return row
        assert time.monotonic() < deadline, f"Slurm has no record of job {slurm_id}"
        time.sleep(0.2)
