"""The local cluster as a normal (non-root) user, from an installed wheel (provision/ packaged inside)."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.conftest import ROOT

USER = "mpicloud-test"


def as_user(script: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["su", USER, "-s", "/bin/bash", "-c", script], capture_output=True, text=True,
                          timeout=timeout)


def test_local_cluster_as_a_normal_user() -> None:
    if os.geteuid() != 0:
        pytest.skip("the suite already runs as a normal user: every integration test exercises that path")
    if shutil.which("useradd") is None or not Path("/usr/bin/python3").exists():
        pytest.fail("needs useradd (passwd) and Debian's python3 (python3, python3-venv)")
    try:
        pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "-m", USER], check=True)
    subprocess.run(["usermod", "-s", "/bin/bash", USER], check=True)  # bash: the shell that reads ~/.bashrc
    scratch = Path(tempfile.mkdtemp(prefix="mpicloud-src-"))  # readable by the test user (pytest's tmp is not)
    try:
        _run_as_user(scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run_as_user(scratch: Path) -> None:
    source = scratch / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv", ".git", "*.pyc", "__pycache__",
                                                               ".mypy_cache", ".ruff_cache", ".pytest_cache",
                                                               ".demo-home", "demo-output"))
    subprocess.run(["chmod", "-R", "a+rX", str(scratch)], check=True)
    home = pwd.getpwnam(USER).pw_dir
    # bash would source ~/.bashrc, and sshd run ~/.ssh/rc, for every command on a node; a node's commands must
    # not run the user's dotfiles (a stale pyenv rehash lock in them once stalled every session 60 s, failing CI)
    markers = {dotfile: Path(home) / f"{dotfile.replace('/', '_')}-ran-on-a-node" for dotfile in (".bashrc", ".ssh/rc")}
    for dotfile, marker in markers.items():
        marker.unlink(missing_ok=True)
        Path(home, dotfile).parent.mkdir(exist_ok=True)
        Path(home, dotfile).write_text(f'[ -n "$MPICLOUD_NODE" ] && touch {marker}\n')
    subprocess.run(["chown", "-R", f"{USER}:", f"{home}/.ssh", f"{home}/.bashrc"], check=True)
    setup = as_user(f"cd {home} && rm -rf venv && /usr/bin/python3 -m venv venv && venv/bin/pip install -q {source}")
    assert setup.returncode == 0, setup.stderr[-2000:]
    run = as_user(
        f"cd {home} && export MPICLOUD_HOME={home}/mpicloud-home && venv/bin/mpicloud down demo >/dev/null 2>&1; "
        f"venv/bin/mpicloud up {source}/examples/local.yaml && "
        "id=$(venv/bin/mpicloud submit demo --cores 4 --mpi -- sh -c 'echo $MPICLOUD_NODE $(id -un)') && "
        "venv/bin/mpicloud wait demo $id && venv/bin/mpicloud logs demo $id; rc=$?; venv/bin/mpicloud down demo; "
        "exit $rc")
    assert run.returncode == 0, run.stdout + run.stderr
    rows = sorted(line for line in run.stdout.splitlines() if line.startswith("node"))
    assert rows == [f"node0 {USER}"] * 2 + [f"node1 {USER}"] * 2
    assert [marker.name for marker in markers.values() if marker.exists()] == []
    ps = subprocess.run(["ps", "-o", "stat=,args=", "-u", USER], capture_output=True, text=True).stdout
    assert [line for line in ps.splitlines() if not line.startswith("Z")] == []  # zombies are reaped by init
