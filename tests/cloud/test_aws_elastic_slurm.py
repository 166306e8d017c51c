"""An elastic AWS Linux cluster with Slurm (`scheduler: slurm`, `nodes: {min, max}`), offline: the head's and the
workers' slurm.conf as their boot writes it (the real cluster-files.sh and slurm-node.sh in scratch roots: CLOUD
nodes at the fixed private addresses ec2_nodes.py launches with, the power saving programs and timeouts), the
wrappers and the sudoers rule slurmctld runs them through, runner.json's `slurm_admin`, the CloudFormation template
(cfn-lint), and the real slurm_power.py running the rendered wrapper's command line."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from mpicloud.assets import provision_dir, runner_files
from mpicloud.render.aws.cloud_init import cloud_config, node_addresses, user_data_base64
from mpicloud.render.cloud_config import CLOUD_RESUME_TIMEOUT, CLOUD_SUSPEND_TIMEOUT, SLURM_ADMIN
from mpicloud.render.cloudformation import cluster_template
from mpicloud.spec import ClusterSpec
from tests.cloud.test_aws_elastic import assert_lints_clean
from tests.specdata import aws_spec

LINUX = provision_dir() / "linux"
MAX, MIN = 3, 1
LOGGER = '#!/bin/bash\necho "$(basename "$0") $*" >> "$FAKE_LOG"\n'


def _spec(**overrides: object) -> ClusterSpec:
    return aws_spec(scheduler="slurm", nodes={"min": MIN, "max": MAX}, scale_down_idle_minutes=2.5, **overrides)


def _files(index: int | None, spec: ClusterSpec | None = None) -> dict[str, dict[str, str]]:
    return {f["path"]: f for f in yaml.safe_load(cloud_config(spec or _spec(), index))["write_files"]}


def _boot(tmp_path: Path, index: int | None) -> Path:
    """A node's boot up to slurm-node.sh, for real in a scratch root: node.env as node-env.sh writes it from the
    instance tags (max + 1 nodes), cluster-files.sh (hosts from the fixed addresses; the head's runner.json),
    slurm-node.sh (stand-in systemctl and chown). Returns the root."""
    spec, role = _spec(), "head" if index == 0 else "worker"
    ips = node_addresses(spec.aws_options.subnet_cidr, spec.node_count)
    root = tmp_path / role
    (root / "etc" / "mpicloud").mkdir(parents=True)
    (root / "opt" / "mpicloud").mkdir(parents=True)
    (root / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
    (root / "etc" / "environment").write_text("")
    (root / "etc" / "mpicloud" / "node.env").write_text(
        f"MPICLOUD_COUNT={MAX + 1}\nMPICLOUD_SLOTS=4\nMPICLOUD_IDLE_MINUTES=0\nMPICLOUD_REGION=eu-west-1\n"
        f"MPICLOUD_LAUNCH_TEMPLATE=lt-0123\nMPICLOUD_CLUSTER=demo\nMPICLOUD_PRIVATE_IP={ips[2]}\n")
    (root / "etc" / "mpicloud" / "munge.key").write_bytes(b"k" * 1024)
    for path, file in _files(index).items():
        if path.startswith("/opt/mpicloud/") and not path.endswith(".sh"):
            (root / path.lstrip("/")).write_text(file["content"])
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in ("systemctl", "chown"):
        (bin_dir / name).write_text(LOGGER)
        (bin_dir / name).chmod(0o755)
    env = {**os.environ, "MPICLOUD_SYSROOT": str(root), "PATH": f"{bin_dir}:{os.environ['PATH']}",
           "FAKE_LOG": str(tmp_path / f"{role}.log")}
    user = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
    for argv in (["cluster-files.sh", "auto" if index is None else str(index), user, str(tmp_path / "shared"), *ips],
                 ["slurm-node.sh", role]):
        done = subprocess.run(["bash", str(LINUX / argv[0]), *argv[1:]], capture_output=True, text=True, env=env,
                              timeout=60)
        assert done.returncode == 0, done.stderr
    return root


def test_head_and_workers_list_the_compute_nodes_as_cloud_nodes_at_their_fixed_addresses(tmp_path: Path) -> None:
    head, worker = _boot(tmp_path, 0), _boot(tmp_path, None)
    conf = (head / "etc" / "slurm" / "slurm.conf").read_text()
    assert (worker / "etc" / "slurm" / "slurm.conf").read_text() == conf  # one slurm.conf on every node
    assert (worker / "etc" / "hostname").read_text() == "node2\n"  # the worker found its name from its address
    ips = node_addresses(_spec().aws_options.subnet_cidr, MAX + 1)
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
    assert (tmp_path / "worker.log").read_text().splitlines()[-1] == "systemctl enable --now slurmd"
    assert "systemctl enable --now slurmctld" in (tmp_path / "head.log").read_text().splitlines()


def test_a_node_without_its_address_in_hosts_stops_the_boot_with_one_line(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc" / "mpicloud").mkdir(parents=True)
    (root / "opt" / "mpicloud").mkdir(parents=True)
    (root / "etc" / "hosts").write_text("127.0.0.1 localhost\n10.0.0.11 node1\n")
    (root / "etc" / "mpicloud" / "node.env").write_text("MPICLOUD_COUNT=3\nMPICLOUD_SLOTS=4\n")
    (root / "opt" / "mpicloud" / "slurm.conf.in").write_text(_files(0)["/opt/mpicloud/slurm.conf.in"]["content"])
    done = subprocess.run(["bash", str(LINUX / "slurm-node.sh"), "head"], capture_output=True, text=True,
                          env={**os.environ, "MPICLOUD_SYSROOT": str(root)}, timeout=60)
    assert done.returncode == 2 and done.stderr == "slurm-node.sh: no address of node2 in /etc/hosts\n"


def test_a_fixed_slurm_cluster_keeps_its_plain_node_line() -> None:
    conf = _files(0, aws_spec(scheduler="slurm"))["/opt/mpicloud/slurm.conf.in"]["content"]
    assert "NodeName=node[0-@LAST@] CPUs=@CPUS@ State=UNKNOWN\n" in conf
    assert "State=CLOUD" not in conf and "ResumeProgram" not in conf and "NodeAddr" not in conf


def test_the_head_runs_slurm_power_as_the_cluster_user_through_exactly_three_sudo_rules() -> None:
    files = _files(0)
    command = "/usr/bin/python3 /opt/mpicloud/slurm_power.py --root /shared/.mpicloud"
    for action in ("resume", "suspend", "prolog"):
        wrapper = files[f"/opt/mpicloud/slurm-{action}"]
        nodes = '"$SLURM_JOB_NODELIST"' if action == "prolog" else '"$@"'  # sudo passes no environment
        assert wrapper["permissions"] == "0755"  # slurmctld refuses a group- or world-writable program
        assert wrapper["content"].splitlines()[-1] == f"exec sudo -n -u mpiadmin {command} {action} -- {nodes}"
    rule = files["/etc/sudoers.d/mpicloud-slurm-power"]
    assert rule["permissions"] == "0440"
    assert rule["content"].splitlines()[-1] == "slurm ALL=(mpiadmin) NOPASSWD: " + ", ".join(
        f"{command} {action} -- *" for action in ("resume", "suspend", "prolog"))
    config = json.loads(files["/opt/mpicloud/runner.base.json"]["content"])
    assert config["scheduler"] == "slurm" and config["slurm_admin"] == SLURM_ADMIN == ["sudo", "-n", "-u", "slurm"]
    assert config["nodes"] == [{"name": "node0", "slots": 0}]
    assert config["pool"]["resume_command"] == ["/usr/bin/python3", "/opt/mpicloud/ec2_nodes.py", "resume",
                                                "--root", "/shared/.mpicloud"]
    assert "slurm_power.py" in runner_files()  # fetch-runner.sh installs it in /opt/mpicloud with the runner
    worker = _files(None)
    assert not [p for p in worker if "sudoers" in p or p[len("/opt/mpicloud/"):] in ("slurm-resume", "slurm-prolog")]
    assert worker["/opt/mpicloud/slurm.conf.in"] == _files(0)["/opt/mpicloud/slurm.conf.in"]
    assert "python3-boto3" in yaml.safe_load(cloud_config(_spec(), 0))["packages"]


def test_the_power_wrapper_refuses_anything_but_one_hostlist(tmp_path: Path) -> None:
    """What the sudoers rule lets through (`-- *`) cannot become a second --root or another action: the real
    slurm_power.py takes Slurm's hostlist after `--` only (argparse)."""
    script = provision_dir() / "slurm" / "slurm_power.py"
    root = tmp_path / "runner"
    root.mkdir()
    for extra in (["x", "--root", str(tmp_path)], ["x", "y"]):
        done = subprocess.run(["/usr/bin/python3", str(script), "--root", str(root), "resume", "--", *extra],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and "unrecognized arguments" in done.stderr
    assert not (tmp_path / "slurm").exists() and not (root / "slurm").exists()


def test_user_data_fits_and_the_cloudformation_template_lints_clean() -> None:
    spec = _spec()
    for index in (0, None):
        assert user_data_base64(spec, index)
    template = cluster_template(spec)
    assert_lints_clean(template)
    assert "Node1" not in template["Resources"] and "ComputeLaunchTemplate" in template["Resources"]


@pytest.mark.parametrize("scheduler", ["slurm"])
def test_azure_still_refuses_slurm_with_an_elastic_cluster(scheduler: str) -> None:
    from mpicloud.errors import SpecError
    from mpicloud.spec import parse_spec

    text = (Path(__file__).resolve().parents[2] / "examples" / "azure-linux-elastic.yaml").read_text()
    with pytest.raises(SpecError, match=r"needs the built-in queue \(scheduler: builtin\) on azure"):
        parse_spec(text + f"scheduler: {scheduler}\n")
