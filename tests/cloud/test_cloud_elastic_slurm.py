"""Elastic Slurm clusters on the clouds (`scheduler: slurm`, `nodes: {min, max}`; AWS and Azure Linux), offline:
each node's slurm.conf as its boot writes it (the real cluster-files.sh and slurm-node.sh in scratch roots: CLOUD
nodes at the fixed private addresses, the power saving programs and timeouts), how each node starts its Slurm
daemons, the wrappers and the sudoers rule slurmctld runs them through and runner.json's `slurm_admin`.
The cloud calls: tests/cloud/test_aws_elastic_slurm.py (moto), test_azure_elastic_slurm.py (on the wire)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from mpicloud.assets import provision_dir, runner_files
from mpicloud.render.aws import cloud_init as aws_init
from mpicloud.render.azure import cloud_init as azure_init
from mpicloud.render.cloud_config import CLOUD_RESUME_TIMEOUT, CLOUD_SUSPEND_TIMEOUT, SLURM_ADMIN
from mpicloud.spec import ClusterSpec, spec_from_dict
from tests.cloud import test_aws_node_files as node_files
from tests.specdata import aws_spec

ROOT = Path(__file__).resolve().parents[2]
LINUX = provision_dir() / "linux"
MAX, MIN = 3, 1
#: the node actions the pool (and so Slurm's ResumeProgram/SuspendProgram) runs on each cloud
ACTIONS = {"aws": "ec2_nodes.py", "azure": "azure_nodes.py"}
#: a stand-in systemctl that logs its arguments and, when asked to start slurmd, the ExecStart it would run
SYSTEMCTL = """#!/bin/bash
echo "systemctl $*" >> "$FAKE_LOG"
if [ "$*" = "enable --now slurmd" ]; then
  cat "$MPICLOUD_SYSROOT"/run/systemd/system/slurmd.service.d/*.conf 2>/dev/null | grep '^ExecStart=.' >> "$FAKE_LOG"
fi
exit 0
"""


def elastic_spec(cloud: str, **overrides: object) -> ClusterSpec:
    """An elastic Slurm spec on `cloud` (node1..node3, one kept up, 2.5 idle minutes)."""
    fields = {"scheduler": "slurm", "nodes": {"min": MIN, "max": MAX}, "scale_down_idle_minutes": 2.5, **overrides}
    if cloud == "aws":
        return aws_spec(**fields)
    doc = yaml.safe_load((ROOT / "examples" / "azure-linux-elastic-slurm.yaml").read_text(encoding="utf-8"))
    return spec_from_dict({**doc, "name": "demo", **fields})


def cloud_config(spec: ClusterSpec, index: int | None) -> str:
    return (aws_init if spec.cloud == "aws" else azure_init).cloud_config(spec, index)


def boot_files(spec: ClusterSpec, index: int | None) -> dict[str, dict[str, str]]:
    return {f["path"]: f for f in yaml.safe_load(cloud_config(spec, index))["write_files"]}


def addresses(spec: ClusterSpec) -> list[str]:
    """The fixed private addresses of node0..node<max> on the spec's cloud."""
    if spec.cloud == "aws":
        return aws_init.node_addresses(spec.aws_options.subnet_cidr, spec.node_count)
    return azure_init.node_addresses(spec.azure_options.subnet_cidr, spec.node_count)


def boot(tmp_path: Path, spec: ClusterSpec, index: int | None) -> Path:
    """A node's boot up to slurm-node.sh, for real in a scratch root: node.env as the cloud's node-env script
    writes it from the instance tags (max + 1 nodes; a worker's own address), cluster-files.sh (hosts from the
    fixed addresses; the head's runner.json), slurm-node.sh (stand-in systemctl and chown). Returns the root."""
    role = "head" if index == 0 else "worker"
    ips = addresses(spec)
    root = node_files._sysroot(tmp_path / role, MAX + 1, "0")
    with open(root / "etc" / "mpicloud" / "node.env", "a", encoding="utf-8") as env_file:
        cloud = "MPICLOUD_LAUNCH_TEMPLATE=lt-0123\nMPICLOUD_CLUSTER=demo\n" if spec.cloud == "aws" else \
            "MPICLOUD_VAULT=demo-kv\nMPICLOUD_ARM=https://management.azure.com/\n"
        env_file.write(f"{cloud}MPICLOUD_PRIVATE_IP={ips[2]}\n")
    (root / "etc" / "mpicloud" / "munge.key").write_bytes(b"k" * 1024)
    for path, file in boot_files(spec, index).items():
        if path.startswith("/opt/mpicloud/") and not path.endswith(".sh"):
            (root / path.lstrip("/")).write_text(file["content"])
    env = {**node_files._tools(tmp_path, systemctl=SYSTEMCTL, chown=node_files.LOGGER),
           "MPICLOUD_SYSROOT": str(root), "FAKE_LOG": str(tmp_path / f"{role}.log")}
    user = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
    for argv in (["cluster-files.sh", "auto" if index is None else str(index), user, str(tmp_path / "shared"), *ips],
                 ["slurm-node.sh", role]):
        done = subprocess.run(["bash", str(LINUX / argv[0]), *argv[1:]], capture_output=True, text=True, env=env,
                              timeout=60)
        assert done.returncode == 0, done.stderr
    return root


@pytest.mark.parametrize("cloud", ["aws", "azure"])
def test_head_and_workers_list_the_compute_nodes_as_cloud_nodes_at_their_fixed_addresses(
        cloud: str, tmp_path: Path) -> None:
    spec = elastic_spec(cloud)
    node0, worker = boot(tmp_path, spec, 0), boot(tmp_path, spec, None)
    conf = (node0 / "etc" / "slurm" / "slurm.conf").read_text()
    assert (worker / "etc" / "slurm" / "slurm.conf").read_text() == conf  # one slurm.conf on every node
    assert (worker / "etc" / "hostname").read_text() == "node2\n"  # the worker found its name from its address
    ips = addresses(spec)
    assert ips[1:] == ["10.0.0.11", "10.0.0.12", "10.0.0.13"]
    nodes = [line for line in conf.splitlines() if line.startswith("NodeName=")]
    # node0 runs slurmctld and is no Slurm node: it runs no jobs
    assert nodes == [f"NodeName=node[1-{MAX}] NodeAddr={','.join(ips[1:])} CPUs=4 State=CLOUD"]
    assert "@" not in conf and "SlurmctldHost=node0\n" in conf and "SlurmUser=slurm\n" in conf
    settings = dict(line.split("=", 1) for line in conf.splitlines() if line and not line.startswith("#"))
    assert {k: settings[k] for k in ("ResumeProgram", "SuspendProgram", "PrologSlurmctld")} == {
        "ResumeProgram": "/opt/mpicloud/slurm-resume", "SuspendProgram": "/opt/mpicloud/slurm-suspend",
        "PrologSlurmctld": "/opt/mpicloud/slurm-prolog"}
    # scale_down_idle_minutes 2.5 in Slurm's whole seconds; a cloud VM's launch and first boot within ResumeTimeout
    assert (settings["SuspendTime"], settings["ResumeTimeout"], settings["SuspendTimeout"]) == (
        "150", str(CLOUD_RESUME_TIMEOUT), str(CLOUD_SUSPEND_TIMEOUT))
    assert CLOUD_RESUME_TIMEOUT >= 1800 and settings["SuspendExcNodes"] == f"node[1-{MAX}]:{MIN}"
    assert settings["PrivateData"] == "cloud"


@pytest.mark.parametrize("cloud", ["aws", "azure"])
def test_the_head_runs_slurmctld_only_and_a_compute_nodes_first_slurmd_reports_a_fresh_boot(
        cloud: str, tmp_path: Path) -> None:
    """An elastic head is no Slurm node (a slurmd there would fail: no NodeName for node0). A compute node starts
    its first slurmd with -b through a runtime drop-in that is removed once it runs: a VM made before Slurm asked
    it up (Azure) must report a boot newer than the request; a later restart of slurmd must not look like a reboot."""
    spec = elastic_spec(cloud)
    boot(tmp_path, spec, 0)
    worker = boot(tmp_path, spec, None)
    head_calls = (tmp_path / "head.log").read_text().splitlines()
    assert "systemctl enable --now slurmctld" in head_calls and not [c for c in head_calls if "slurmd" in c]
    calls = (tmp_path / "worker.log").read_text().splitlines()
    start = calls.index("systemctl enable --now slurmd")
    assert calls[start - 1:] == ["systemctl daemon-reload", "systemctl enable --now slurmd",
                                 "ExecStart=/usr/sbin/slurmd -D -s -b $SLURMD_OPTIONS", "systemctl daemon-reload"]
    assert "systemctl enable --now slurmctld" not in calls
    assert list((worker / "run" / "systemd" / "system" / "slurmd.service.d").iterdir()) == []


def test_a_node_without_its_address_in_hosts_stops_the_boot_with_one_line(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc" / "mpicloud").mkdir(parents=True)
    (root / "opt" / "mpicloud").mkdir(parents=True)
    (root / "etc" / "hosts").write_text("127.0.0.1 localhost\n10.0.0.11 node1\n")
    (root / "etc" / "mpicloud" / "node.env").write_text("MPICLOUD_COUNT=3\nMPICLOUD_SLOTS=4\n")
    conf = boot_files(elastic_spec("aws"), 0)["/opt/mpicloud/slurm.conf.in"]["content"]
    (root / "opt" / "mpicloud" / "slurm.conf.in").write_text(conf)
    done = subprocess.run(["bash", str(LINUX / "slurm-node.sh"), "head"], capture_output=True, text=True,
                          env={**os.environ, "MPICLOUD_SYSROOT": str(root)}, timeout=60)
    assert done.returncode == 2 and done.stderr == "slurm-node.sh: no address of node2 in /etc/hosts\n"


@pytest.mark.parametrize("cloud", ["aws", "azure"])
def test_a_fixed_slurm_cluster_keeps_its_plain_node_line_and_a_slurmd_on_every_node(
        cloud: str, tmp_path: Path) -> None:
    spec = elastic_spec(cloud, nodes=1, scale_down_idle_minutes=None)
    conf = boot_files(spec, 0)["/opt/mpicloud/slurm.conf.in"]["content"]
    assert "NodeName=node[0-@LAST@] CPUs=@CPUS@ State=UNKNOWN\n" in conf
    assert "State=CLOUD" not in conf and "ResumeProgram" not in conf and "NodeAddr" not in conf
    root = node_files._sysroot(tmp_path, 1, "0")  # one node, whose /etc/hosts lists no compute node
    (root / "opt" / "mpicloud" / "slurm.conf.in").write_text(conf)
    (root / "etc" / "mpicloud" / "munge.key").write_bytes(b"k" * 1024)
    env = {**node_files._tools(tmp_path, systemctl=SYSTEMCTL, chown=node_files.LOGGER),
           "MPICLOUD_SYSROOT": str(root), "FAKE_LOG": str(tmp_path / "calls.log")}
    done = subprocess.run(["bash", str(LINUX / "slurm-node.sh"), "head"], capture_output=True, text=True, env=env,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "NodeName=node[0-0] CPUs=4 State=UNKNOWN\n" in (root / "etc" / "slurm" / "slurm.conf").read_text()
    calls = (tmp_path / "calls.log").read_text().splitlines()
    assert calls[-2:] == ["systemctl enable --now slurmctld", "systemctl enable --now slurmd"]  # no -b drop-in
    assert "systemctl daemon-reload" not in calls


@pytest.mark.parametrize("cloud", ["aws", "azure"])
def test_the_head_runs_slurm_power_as_the_cluster_user_through_exactly_three_sudo_rules(cloud: str) -> None:
    spec = elastic_spec(cloud)
    files = boot_files(spec, 0)
    command = "/usr/bin/python3 /opt/mpicloud/slurm_power.py --root /shared/.mpicloud"
    for action in ("resume", "suspend", "prolog"):
        wrapper = files[f"/opt/mpicloud/slurm-{action}"]
        nodes = '"$SLURM_JOB_NODELIST"' if action == "prolog" else '"$@"'  # sudo passes no environment
        assert wrapper["permissions"] == "0755"  # slurmctld refuses a group- or world-writable program
        assert wrapper["content"].splitlines()[-1] == \
            f"exec /usr/bin/sudo -n -u mpiadmin {command} {action} -- {nodes}"
    rule = files["/etc/sudoers.d/mpicloud-slurm-power"]
    assert rule["permissions"] == "0440"
    assert rule["content"].splitlines()[-1] == "slurm ALL=(mpiadmin) NOPASSWD: " + ", ".join(
        f"{command} {action} -- *" for action in ("resume", "suspend", "prolog"))
    config = json.loads(files["/opt/mpicloud/runner.base.json"]["content"])
    assert config["scheduler"] == "slurm" and config["slurm_admin"] == SLURM_ADMIN == ["sudo", "-n", "-u", "slurm"]
    assert config["nodes"] == [{"name": "node0", "slots": 0}]
    assert config["pool"]["resume_command"] == ["/usr/bin/python3", f"/opt/mpicloud/{ACTIONS[cloud]}", "resume",
                                                "--root", "/shared/.mpicloud"]
    assert "slurm_power.py" in runner_files()  # fetch-runner.sh / azure-runner.sh install it with the runner
    worker = boot_files(spec, None)
    assert not [p for p in worker if "sudoers" in p or p[len("/opt/mpicloud/"):] in ("slurm-resume", "slurm-prolog")]
    assert worker["/opt/mpicloud/slurm.conf.in"] == files["/opt/mpicloud/slurm.conf.in"]


# -- what the cloud tests of slurm_power.py share: sudo and scontrol stand-ins, the head's wrappers in scratch places

FAKE_SUDO = """#!/bin/bash
# stand-in for sudo -n -u USER COMMAND...: logs the call, runs COMMAND as this user with sudo's fresh environment
# (moto's fake keys: a head's boto3 finds its credentials in the instance metadata)
echo "sudo $*" >> "$READY_DIR/sudo.log"
[ "$1 $2" = "-n -u" ] || exit 1
shift 3
exec env -i PATH="$PATH" HOME="$HOME" READY_DIR="$READY_DIR" AWS_ACCESS_KEY_ID=testing \\
  AWS_SECRET_ACCESS_KEY=testing "$@"
"""
FAKE_SCONTROL = """#!/bin/bash
# Slurm's hostlist expansion (node[A-B] or one name); anything else is recorded
if [ "$1 $2" = "show hostnames" ]; then
  if [[ $3 =~ ^node\\[([0-9]+)-([0-9]+)\\]$ ]]; then
    for ((i = BASH_REMATCH[1]; i <= BASH_REMATCH[2]; i++)); do echo "node$i"; done
  else echo "$3"; fi
  exit
fi
echo "scontrol $*" >> "$READY_DIR/scontrol.log"
"""


def install_fakes(bin_dir: Path) -> None:
    """sudo and scontrol stand-ins in `bin_dir` (first on PATH); they log into $READY_DIR."""
    for name, text in (("sudo", FAKE_SUDO), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)


def install_wrappers(files: dict[str, dict[str, str]], bin_dir: Path, opt: Path, root: Path) -> dict[str, Path]:
    """The head's rendered slurm-resume and slurm-suspend (`files`: its boot files) beside `root`, pointing at a
    scratch /opt/mpicloud (`opt`), runner root (`root`) and the stand-in sudo in `bin_dir`."""
    install_fakes(bin_dir)
    wrappers = {}
    for action in ("resume", "suspend"):
        text = files[f"/opt/mpicloud/slurm-{action}"]["content"]
        wrappers[action] = root.parent / f"slurm-{action}"
        wrappers[action].write_text(text.replace("/usr/bin/sudo", str(bin_dir / "sudo"))
                                    .replace("/opt/mpicloud", str(opt)).replace("/shared/.mpicloud", str(root)))
        wrappers[action].chmod(0o755)
    return wrappers
