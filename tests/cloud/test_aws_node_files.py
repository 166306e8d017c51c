"""provision/linux/cluster-files.sh and fetch-runner.sh for real in a scratch root (fetch-runner.sh with a
stand-in `aws` command that serves SSM parameters from files): names, hostfile, MPICLOUD_NODE, runner.json,
the runner joined from its parameters and checked by SHA-256."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from mpicloud.assets import provision_dir
from mpicloud.render.linux import STOP_COMMAND, cloud_config, runner_parameters
from mpicloud.render.runner_config import runner_config
from tests.cloud.conftest import aws_spec

SCRIPT = provision_dir() / "linux" / "cluster-files.sh"
IPS = ["10.0.0.10", "10.0.0.11", "10.0.0.12", "10.0.0.13"]


def _sysroot(tmp_path: Path, count: int, idle: str) -> Path:
    """A scratch root laid out as cloud-init and node-env.sh leave it on the head node."""
    root = tmp_path / "root"
    (root / "etc" / "mpicloud").mkdir(parents=True)
    (root / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
    (root / "etc" / "environment").write_text("")
    (root / "etc" / "mpicloud" / "node.env").write_text(
        f"MPICLOUD_COUNT={count}\nMPICLOUD_SLOTS=4\nMPICLOUD_SSM_PREFIX=/mpicloud/demo\n"
        f"MPICLOUD_IDLE_MINUTES={idle}\nMPICLOUD_REGION=eu-west-1\n")
    files = {f["path"]: f["content"] for f in yaml.safe_load(cloud_config(aws_spec(), 0))["write_files"]}
    (root / "opt" / "mpicloud").mkdir(parents=True)
    (root / "opt" / "mpicloud" / "runner.base.json").write_text(files["/opt/mpicloud/runner.base.json"])
    return root


def _run(root: Path, index: int, shared: Path, ips: list[str]) -> subprocess.CompletedProcess[str]:
    user = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
    return subprocess.run(["bash", str(SCRIPT), str(index), user, str(shared), *ips], capture_output=True,
                          text=True, env={**os.environ, "MPICLOUD_SYSROOT": str(root)}, timeout=60)


@pytest.mark.parametrize(("count", "idle", "expected_idle"), [(3, "45", 45.0), (1, "0", None)])
def test_head_node_files(tmp_path: Path, count: int, idle: str, expected_idle: float | None) -> None:
    root, shared = _sysroot(tmp_path, count, idle), tmp_path / "shared"
    done = _run(root, 0, shared, IPS)
    assert done.returncode == 0, done.stderr
    hosts = (root / "etc" / "hosts").read_text().splitlines()
    assert hosts[1:] == [f"{IPS[i]} node{i}" for i in range(count)]
    assert (root / "etc" / "mpicloud" / "hostfile").read_text() == "".join(
        f"node{i} slots=4\n" for i in range(count))
    assert (root / "etc" / "environment").read_text() == "MPICLOUD_NODE=node0\n"
    written = json.loads((shared / ".mpicloud" / "runner.json").read_text())
    spec = aws_spec(nodes=count, slots_per_node=4, idle_shutdown_minutes=expected_idle)
    assert written == runner_config(spec, STOP_COMMAND)
    assert _run(root, 0, shared, IPS).returncode == 0  # a second run (reboot) adds nothing
    assert len((root / "etc" / "hosts").read_text().splitlines()) == count + 1


def test_worker_writes_no_runner_config_and_too_few_addresses_fail(tmp_path: Path) -> None:
    root, shared = _sysroot(tmp_path, 3, "0"), tmp_path / "shared"
    assert _run(root, 2, shared, IPS).returncode == 0
    assert (root / "etc" / "environment").read_text() == "MPICLOUD_NODE=node2\n"
    assert not shared.exists()
    done = _run(_sysroot(tmp_path / "b", 3, "0"), 1, shared, IPS[:2])
    assert done.returncode == 2 and "3 nodes but 2 addresses" in done.stderr


FAKE_AWS = """#!/bin/bash
# stand-in for `aws ssm get-parameter ... --name N --query Parameter.Value --output text`
while [ $# -gt 0 ]; do case "$1" in --name) name=$2; shift 2 ;; *) shift ;; esac; done
cat "$FAKE_SSM$name" && echo
"""


def _fetch(tmp_path: Path, corrupt: bool = False) -> tuple[subprocess.CompletedProcess[str], Path]:
    root, store, bin_dir = _sysroot(tmp_path, 2, "0"), tmp_path / "ssm", tmp_path / "bin"
    for name, value in runner_parameters("/mpicloud/demo").items():
        (store / name.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (store / name.lstrip("/")).write_text(value[:-8] + "AAAAAAAA" if corrupt and name.endswith("/1") else value)
    bin_dir.mkdir()
    (bin_dir / "aws").write_text(FAKE_AWS)
    (bin_dir / "aws").chmod(0o755)
    head = yaml.safe_load(cloud_config(aws_spec(), 0))
    command = next(c for c in head["runcmd"] if "/opt/mpicloud/fetch-runner.sh" in c)
    env = {**os.environ, "MPICLOUD_SYSROOT": str(root), "FAKE_SSM": str(store),
           "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    done = subprocess.run(["bash", str(provision_dir() / "linux" / "fetch-runner.sh"), *command[2:]],
                          capture_output=True, text=True, env=env, timeout=60)
    return done, root


def test_fetch_runner_joins_and_verifies_the_parameters(tmp_path: Path) -> None:
    done, root = _fetch(tmp_path)
    assert done.returncode == 0, done.stderr
    for name in ("runner.py", "transfer.py"):
        assert (root / "opt" / "mpicloud" / name).read_bytes() == (provision_dir() / "runner" / name).read_bytes()


def test_fetch_runner_refuses_a_corrupt_piece(tmp_path: Path) -> None:
    done, root = _fetch(tmp_path, corrupt=True)
    assert done.returncode != 0
    assert not (root / "opt" / "mpicloud" / "runner.py").exists()
