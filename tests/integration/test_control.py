"""The CLI's control socket against the real local cluster: owner-only, reused, one master when calls race,
expiry after idle time, off with --no-control, host keys still pinned."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mpicloud.api import Cluster
from mpicloud.cluster import control
from tests.conftest import ROOT, cli


def _fresh(cluster: Cluster) -> Path:
    """The cluster's socket path, with no master serving it."""
    control.stop_master(cluster.record)
    path = control.socket_path(cluster.record)
    assert path is not None
    deadline = time.monotonic() + 10
    while path.exists():
        assert time.monotonic() < deadline, "the master did not exit"
        time.sleep(0.05)
    return path


def _masters(path: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"mpicloud.cluster.control" in args and str(path).encode() in args:
            found.append(int(entry.name))
    return found


def test_socket_is_owner_only_and_reused(local_cluster: Cluster) -> None:
    path = _fresh(local_cluster)
    first = cli("jobs", "itest")
    assert first.returncode == 0, first.stderr
    info = path.stat()
    assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600 and info.st_uid == os.getuid()
    folder = path.parent.stat()
    assert stat.S_IMODE(folder.st_mode) == 0o700 and folder.st_uid == os.getuid()
    masters = _masters(path)
    assert len(masters) == 1
    second = cli("status", "itest")
    assert second.returncode == 0 and "slots busy" in second.stdout, second.stderr
    assert _masters(path) == masters and path.stat().st_ino == info.st_ino  # the same master served it
    if os.getuid() == 0:  # another user cannot even reach the socket
        probe = ("import os, socket, sys; os.setgid(65534); os.setuid(65534); s = socket.socket(socket.AF_UNIX)\n"
                 "try:\n    s.connect(sys.argv[1])\nexcept PermissionError:\n    sys.exit(3)\n")
        denied = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True, timeout=30)
        assert denied.returncode == 3, denied.stderr


def test_racing_calls_start_one_master(local_cluster: Cluster) -> None:
    path = _fresh(local_cluster)
    calls = [subprocess.Popen([sys.executable, "-m", "mpicloud.cli", "jobs", "itest"], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(4)]
    for call in calls:
        _out, err = call.communicate(timeout=120)
        assert call.returncode == 0, err
    assert len(_masters(path)) == 1


def test_master_expires_when_idle(local_cluster: Cluster) -> None:
    path = _fresh(local_cluster)
    done = cli("jobs", "itest", env={"MPICLOUD_CONTROL_PERSIST": "1"})
    assert done.returncode == 0, done.stderr
    deadline = time.monotonic() + 15
    while path.exists() or _masters(path):
        assert time.monotonic() < deadline, "the idle master did not expire"
        time.sleep(0.1)
    again = cli("jobs", "itest")  # a later call simply starts a new one
    assert again.returncode == 0 and path.exists(), again.stderr


def test_no_control_flag_connects_directly(local_cluster: Cluster) -> None:
    path = _fresh(local_cluster)
    done = cli("--no-control", "jobs", "itest")
    assert done.returncode == 0, done.stderr
    assert not path.exists() and not _masters(path)


def test_changed_host_key_is_refused_through_the_control_path(local_cluster: Cluster, tmp_path: Path) -> None:
    _fresh(local_cluster)
    known = local_cluster.record.known_hosts
    original = known.read_text()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True)
    fake = (tmp_path / "k.pub").read_text().split()[:2]
    try:
        known.write_text("".join(f"{line.split()[0]} {' '.join(fake)}\n" for line in original.splitlines()))
        refused = cli("jobs", "itest")
        assert refused.returncode == 2 and "differs from the key pinned" in refused.stderr
        assert "Traceback" not in refused.stderr
        path = control.socket_path(local_cluster.record)
        assert path is not None and not path.exists()
        deadline = time.monotonic() + 10
        while _masters(path):  # the refused master exits right after saying why
            assert time.monotonic() < deadline, "the refused master did not exit"
            time.sleep(0.05)
    finally:
        known.write_text(original)
    assert cli("jobs", "itest").returncode == 0


@pytest.mark.parametrize("command", [["logs", "itest"], ["submit", "itest", "--", "sh", "-c", "echo via-master"]])
def test_commands_work_through_the_master(local_cluster: Cluster, command: list[str]) -> None:
    if command[0] == "logs":
        job = local_cluster.submit(["sh", "-c", "echo logged"])
        job.wait(60)
        command = [*command, job.id]
    done = cli(*command)
    assert done.returncode == 0, done.stderr
    if command[0] == "logs":
        assert done.stdout == "logged\n"
    else:
        job_id = done.stdout.split()[-1]
        assert Cluster.get("itest").job(job_id).wait(60).state == "succeeded"
        assert Cluster.get("itest").job(job_id).stdout() == "via-master\n"
