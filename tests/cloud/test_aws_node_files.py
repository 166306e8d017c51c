"""The node scripts of provision/linux/ run for real in scratch roots (MPICLOUD_SYSROOT), with stand-in `aws`,
`ssh` and `sudo` commands where they would reach AWS or other nodes: names, hostfile, MPICLOUD_NODE,
runner.json, the runner joined from SSM pieces, the cluster key and Samba password passed from head to
worker, and the idle-shutdown order."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from mpicloud.assets import provision_dir, runner_files
from mpicloud.render.aws.cloud_init import cloud_config, runner_parameters
from mpicloud.render.runner_config import runner_config
from tests.specdata import aws_spec

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
        f"MPICLOUD_IDLE_MINUTES={idle}\nMPICLOUD_REGION=eu-west-1\nMPICLOUD_KMS_KEY=key-of-this-deployment\n")
    files = {f["path"]: f["content"] for f in yaml.safe_load(cloud_config(aws_spec(), 0))["write_files"]}
    (root / "opt" / "mpicloud").mkdir(parents=True)
    (root / "opt" / "mpicloud" / "runner.base.json").write_text(files["/opt/mpicloud/runner.base.json"])
    return root


def _run(root: Path, index: int | str, shared: Path, ips: list[str]) -> subprocess.CompletedProcess[str]:
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
    assert written == {**runner_config(spec), "share_marker": "/shared/.mpicloud/share-marker",
                       "share_probe": ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=15"]}
    assert (shared / ".mpicloud" / "share-marker").is_file()
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
# stand-in for `aws ssm put-parameter --name N --value file://F` and `aws ssm get-parameter --name N ... text`
echo "$@" >> "$FAKE_SSM.argv"
op=$2
while [ $# -gt 0 ]; do case "$1" in --name) name=$2; shift 2 ;; --value) value=$2; shift 2 ;; *) shift ;; esac; done
case "$op" in
  put-parameter) mkdir -p "$(dirname "$FAKE_SSM$name")"; cat "${value#file://}" > "$FAKE_SSM$name" ;;
  get-parameter) cat "$FAKE_SSM$name" && echo ;;
esac
"""
LOGGER = """#!/bin/bash
echo "$(basename "$0") $*" >> "$FAKE_LOG"
"""


def _tools(tmp_path: Path, **scripts: str) -> dict[str, str]:
    """A bin directory of stand-in commands first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def _fetch(tmp_path: Path, corrupt: bool = False) -> tuple[subprocess.CompletedProcess[str], Path]:
    root, store = _sysroot(tmp_path, 2, "0"), tmp_path / "ssm"
    for name, value in runner_parameters("/mpicloud/demo").items():
        (store / name.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (store / name.lstrip("/")).write_text(value[:-8] + "AAAAAAAA" if corrupt and name.endswith("/1") else value)
    head = yaml.safe_load(cloud_config(aws_spec(), 0))
    command = next(c for c in head["runcmd"] if "/opt/mpicloud/fetch-runner.sh" in c)
    env = {**_tools(tmp_path, aws=FAKE_AWS), "MPICLOUD_SYSROOT": str(root), "FAKE_SSM": f"{store}/"}
    done = subprocess.run(["bash", str(provision_dir() / "linux" / "fetch-runner.sh"), *command[2:]],
                          capture_output=True, text=True, env=env, timeout=60)
    return done, root


def test_fetch_runner_joins_and_verifies_the_parameters(tmp_path: Path) -> None:
    done, root = _fetch(tmp_path)
    assert done.returncode == 0, done.stderr
    for name, data in runner_files().items():
        assert (root / "opt" / "mpicloud" / name).read_bytes() == data


def test_fetch_runner_refuses_a_corrupt_piece(tmp_path: Path) -> None:
    done, root = _fetch(tmp_path, corrupt=True)
    assert done.returncode != 0
    assert not (root / "opt" / "mpicloud" / "runner.py").exists()


def _secrets(tmp_path: Path, role: str, env: dict[str, str], *extra: str
             ) -> tuple[subprocess.CompletedProcess[str], Path]:
    root = _sysroot(tmp_path / role, 2, "0")
    (root / "etc" / "mpicloud" / "admin.pub").write_text("ssh-ed25519 AAAAadmin you@laptop\n")
    user = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
    done = subprocess.run(["bash", str(provision_dir() / "linux" / "cluster-secrets.sh"), role, user, *extra],
                          capture_output=True, text=True, env={**env, "MPICLOUD_SYSROOT": str(root)}, timeout=60)
    return done, root / Path(os.path.expanduser("~")).relative_to("/") / ".ssh"


def test_cluster_key_and_smb_password_pass_from_head_to_worker_through_ssm(tmp_path: Path) -> None:
    store = tmp_path / "ssm"
    env = {**_tools(tmp_path, aws=FAKE_AWS), "FAKE_SSM": str(store)}
    head, head_ssh = _secrets(tmp_path, "head", env)
    assert head.returncode == 0, head.stderr
    worker, worker_ssh = _secrets(tmp_path, "worker", env)
    assert worker.returncode == 0, worker.stderr
    key = (head_ssh / "id_ed25519").read_text()
    assert "PRIVATE KEY" in key and (worker_ssh / "id_ed25519").read_text().strip() == key.strip()
    assert (store / "mpicloud" / "demo" / "ssh-key").read_text() == key
    password = (tmp_path / "head" / "root" / "etc" / "mpicloud" / "smb-password").read_text()
    assert len(password) >= 24
    assert (tmp_path / "worker" / "root" / "etc" / "mpicloud" / "smb-password").read_text().strip() == password
    for ssh in (head_ssh, worker_ssh):
        keys = (ssh / "authorized_keys").read_text().splitlines()
        assert keys[0] == "ssh-ed25519 AAAAadmin you@laptop" and keys[1].startswith("ssh-ed25519 ")
        assert (ssh / "id_ed25519").stat().st_mode & 0o077 == 0
    argv = (tmp_path / "ssm.argv").read_text()
    assert password not in argv and "PRIVATE KEY" not in argv and "--type SecureString" in argv
    # encrypted with the deployment's own key, never the account-wide aws/ssm default
    assert argv.count("--key-id key-of-this-deployment") == 2


def test_munge_key_passes_from_head_to_worker_through_ssm_only_for_slurm(tmp_path: Path) -> None:
    store = tmp_path / "ssm"
    env = {**_tools(tmp_path, aws=FAKE_AWS), "FAKE_SSM": str(store)}
    for role in ("head", "worker"):
        done, _ = _secrets(tmp_path, role, env, "munge")
        assert done.returncode == 0, done.stderr
    keys = [(tmp_path / role / "root" / "etc" / "mpicloud" / "munge.key").read_bytes() for role in ("head", "worker")]
    assert len(keys[0]) == 1024 and keys[0] == keys[1]
    assert not list((tmp_path / "head" / "root" / "etc" / "mpicloud").glob("*.b64"))
    argv = (tmp_path / "ssm.argv").read_text()
    assert "munge-key" in argv and argv.count("--key-id key-of-this-deployment") == 3
    assert keys[0].hex() not in argv and (store / "mpicloud" / "demo" / "munge-key").read_text() not in argv
    plain, _ = _secrets(tmp_path / "builtin", "head", {**env, "FAKE_SSM": str(tmp_path / "ssm2")})
    assert plain.returncode == 0 and not (tmp_path / "builtin" / "head" / "root" / "etc" / "mpicloud" /
                                         "munge.key").exists()


@pytest.mark.parametrize("role", ["head", "worker"])
def test_slurm_node_writes_the_config_of_this_deployment_and_starts_the_daemons(tmp_path: Path, role: str) -> None:
    spec = aws_spec(scheduler="slurm", nodes=5)
    index = 0 if role == "head" else 1
    root = _sysroot(tmp_path, 5, "0")
    files = {f["path"]: f for f in yaml.safe_load(cloud_config(spec, index))["write_files"]}
    (root / "opt" / "mpicloud" / "slurm.conf.in").write_text(files["/opt/mpicloud/slurm.conf.in"]["content"])
    (root / "etc" / "mpicloud" / "munge.key").write_bytes(b"k" * 1024)
    env = {**_tools(tmp_path, systemctl=LOGGER, chown=LOGGER), "MPICLOUD_SYSROOT": str(root),
           "FAKE_LOG": str(tmp_path / "calls.log")}
    done = subprocess.run(["bash", str(provision_dir() / "linux" / "slurm-node.sh"), role], capture_output=True,
                          text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    conf = (root / "etc" / "slurm" / "slurm.conf").read_text()
    assert "NodeName=node[0-4] CPUs=4 State=UNKNOWN\n" in conf and "@" not in conf
    assert "ClusterName=demo\nSlurmctldHost=node0\n" in conf
    assert "SchedulerType=sched/builtin\nPriorityType=priority/basic\n" in conf  # FIFO, as the local cluster
    assert "TaskProlog=/opt/mpicloud/slurm-task-prolog.sh\n" in conf and "/opt/mpicloud/slurm-task-prolog.sh" in files
    key = root / "etc" / "munge" / "munge.key"
    assert key.read_bytes() == b"k" * 1024 and key.stat().st_mode & 0o777 == 0o400
    calls = (tmp_path / "calls.log").read_text().splitlines()
    assert calls[0] == f"chown munge:munge {key}"
    expected = ["systemctl restart munge", *(["systemctl enable --now slurmctld"] if role == "head" else []),
                "systemctl enable --now slurmd"]
    assert calls[1:] == expected


def test_slurm_user_data_installs_and_starts_slurm_and_holds_no_key() -> None:
    spec = aws_spec(scheduler="slurm")
    head, worker = (yaml.safe_load(cloud_config(spec, i)) for i in (0, 1))
    assert {"munge", "slurmd", "slurm-client", "libpmix-dev", "slurmctld"} <= set(head["packages"])
    assert "slurmctld" not in worker["packages"] and "slurmd" in worker["packages"]
    for data, role in ((head, "head"), (worker, "worker")):
        commands = [" ".join(c) for c in data["runcmd"]]
        secrets = next(i for i, c in enumerate(commands) if "cluster-secrets.sh" in c)
        slurm = commands.index(f"bash /opt/mpicloud/slurm-node.sh {role}")
        storage = next(i for i, c in enumerate(commands) if "shared-storage.sh" in c)
        assert commands[secrets].endswith(" munge") and secrets < storage < slurm
    runner = json.loads({f["path"]: f["content"] for f in head["write_files"]}["/opt/mpicloud/runner.base.json"])
    assert runner["scheduler"] == "slurm"
    builtin = yaml.safe_load(cloud_config(aws_spec(), 0))
    assert not [c for c in builtin["runcmd"] if "munge" in c or "slurm-node.sh" in " ".join(c)]
    assert not [p for p in builtin["packages"] if "slurm" in p or p == "munge"]


def test_idle_shutdown_halts_workers_then_the_head(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc" / "mpicloud").mkdir(parents=True)
    (root / "etc" / "mpicloud" / "hostfile").write_text("".join(f"node{i} slots=4\n" for i in range(3)))
    env = {**_tools(tmp_path, ssh=LOGGER, sudo=LOGGER), "FAKE_LOG": str(tmp_path / "log"),
           "MPICLOUD_SYSROOT": str(root)}
    done = subprocess.run(["bash", str(provision_dir() / "linux" / "stop-cluster.sh"), "halt"], capture_output=True,
                          text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "log").read_text().splitlines() == [
        "ssh -o BatchMode=yes -o ConnectTimeout=10 node1 sudo -n /sbin/shutdown -h now",
        "ssh -o BatchMode=yes -o ConnectTimeout=10 node2 sudo -n /sbin/shutdown -h now",
        "sudo -n /sbin/shutdown -h now"]


def test_a_worker_finds_its_index_from_its_private_address(tmp_path: Path) -> None:
    root, shared = _sysroot(tmp_path, 3, "0"), tmp_path / "shared"
    env = root / "etc" / "mpicloud" / "node.env"
    env.write_text(env.read_text() + "MPICLOUD_PRIVATE_IP=10.0.0.12\n")
    done = _run(root, "auto", shared, IPS)
    assert done.returncode == 0, done.stderr
    assert (root / "etc" / "environment").read_text() == "MPICLOUD_NODE=node2\n"
    assert (root / "etc" / "hostname").read_text() == "node2\n"
    env.write_text(env.read_text().replace("10.0.0.12", "10.0.0.13"))  # beyond NodeCount 3: not a worker
    done = _run(root, "auto", shared, IPS)
    assert done.returncode == 2 and "no worker address" in done.stderr
