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
from typing import Any

import pytest
import yaml

from mpicloud.assets import provision_dir, runner_files
from mpicloud.render.aws.cloud_init import cloud_config, node_addresses, user_data_base64
from mpicloud.render.cloud_config import CLOUD_RESUME_TIMEOUT, CLOUD_SUSPEND_TIMEOUT, SLURM_ADMIN
from mpicloud.render.cloudformation import cluster_template
from mpicloud.spec import ClusterSpec
from tests.cloud import test_aws_elastic as elastic
from tests.cloud import test_aws_node_files as node_files
from tests.specdata import aws_spec

LINUX = provision_dir() / "linux"
MAX, MIN = 3, 1
#: the moto deployment of the elastic template and its head's runner.json (fixtures of test_aws_elastic.py)
deployed, head = elastic.deployed, elastic.head


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
    root = node_files._sysroot(tmp_path / role, MAX + 1, "0")
    with open(root / "etc" / "mpicloud" / "node.env", "a", encoding="utf-8") as env_file:
        env_file.write(f"MPICLOUD_LAUNCH_TEMPLATE=lt-0123\nMPICLOUD_CLUSTER=demo\nMPICLOUD_PRIVATE_IP={ips[2]}\n")
    (root / "etc" / "mpicloud" / "munge.key").write_bytes(b"k" * 1024)
    for path, file in _files(index).items():
        if path.startswith("/opt/mpicloud/") and not path.endswith(".sh"):
            (root / path.lstrip("/")).write_text(file["content"])
    env = {**node_files._tools(tmp_path, systemctl=node_files.LOGGER, chown=node_files.LOGGER),
           "MPICLOUD_SYSROOT": str(root), "FAKE_LOG": str(tmp_path / f"{role}.log")}
    user = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
    for argv in (["cluster-files.sh", "auto" if index is None else str(index), user, str(tmp_path / "shared"), *ips],
                 ["slurm-node.sh", role]):
        done = subprocess.run(["bash", str(LINUX / argv[0]), *argv[1:]], capture_output=True, text=True, env=env,
                              timeout=60)
        assert done.returncode == 0, done.stderr
    return root


def test_head_and_workers_list_the_compute_nodes_as_cloud_nodes_at_their_fixed_addresses(tmp_path: Path) -> None:
    node0, worker = _boot(tmp_path, 0), _boot(tmp_path, None)
    conf = (node0 / "etc" / "slurm" / "slurm.conf").read_text()
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


def test_a_fixed_slurm_cluster_keeps_its_plain_node_line(tmp_path: Path) -> None:
    conf = _files(0, aws_spec(scheduler="slurm"))["/opt/mpicloud/slurm.conf.in"]["content"]
    assert "NodeName=node[0-@LAST@] CPUs=@CPUS@ State=UNKNOWN\n" in conf
    assert "State=CLOUD" not in conf and "ResumeProgram" not in conf and "NodeAddr" not in conf
    root = node_files._sysroot(tmp_path, 1, "0")  # one node, whose /etc/hosts lists no compute node
    (root / "opt" / "mpicloud" / "slurm.conf.in").write_text(conf)
    (root / "etc" / "mpicloud" / "munge.key").write_bytes(b"k" * 1024)
    env = {**node_files._tools(tmp_path, systemctl=node_files.LOGGER, chown=node_files.LOGGER),
           "MPICLOUD_SYSROOT": str(root), "FAKE_LOG": str(tmp_path / "calls.log")}
    done = subprocess.run(["bash", str(LINUX / "slurm-node.sh"), "head"], capture_output=True, text=True, env=env,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "NodeName=node[0-0] CPUs=4 State=UNKNOWN\n" in (root / "etc" / "slurm" / "slurm.conf").read_text()


def test_the_head_runs_slurm_power_as_the_cluster_user_through_exactly_three_sudo_rules() -> None:
    files = _files(0)
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
    elastic.assert_lints_clean(template)
    assert "Node1" not in template["Resources"] and "ComputeLaunchTemplate" in template["Resources"]


@pytest.mark.parametrize("scheduler", ["slurm"])
def test_azure_still_refuses_slurm_with_an_elastic_cluster(scheduler: str) -> None:
    from mpicloud.errors import SpecError
    from mpicloud.spec import parse_spec

    text = (Path(__file__).resolve().parents[2] / "examples" / "azure-linux-elastic.yaml").read_text()
    with pytest.raises(SpecError, match=r"needs the built-in queue \(scheduler: builtin\) on azure"):
        parse_spec(text + f"scheduler: {scheduler}\n")


# -- slurm_power.py through the rendered wrapper, running the pool's ec2_nodes.py against moto ---------------------

FAKE_SUDO = """#!/bin/bash
# stand-in for sudo -n -u USER COMMAND...: logs the call, runs COMMAND as this user with sudo's fresh environment
echo "sudo $*" >> "$READY_DIR/sudo.log"
[ "$1 $2" = "-n -u" ] || exit 1
shift 3
exec env -i PATH="$PATH" HOME="$HOME" READY_DIR="$READY_DIR" AWS_ACCESS_KEY_ID=testing \\
  AWS_SECRET_ACCESS_KEY=testing "$@"
"""
FAKE_SCONTROL = """#!/bin/bash
# Slurm's hostlist expansion for node[1-2]; anything else is recorded
if [ "$1 $2" = "show hostnames" ]; then [ "$3" = "node[1-2]" ] && printf 'node1\\nnode2\\n'; exit; fi
echo "scontrol $*" >> "$READY_DIR/scontrol.log"
"""


def test_slurm_resumes_and_suspends_nodes_through_the_wrapper_and_ec2_nodes_on_moto(deployed: Any, head: Any) -> None:
    """slurmctld's view: the rendered /opt/mpicloud/slurm-resume with Slurm's hostlist runs (through sudo) the real
    slurm_power.py under /usr/bin/python3, which runs the pool's ec2_nodes.py command per node against the moto
    deployment of the elastic template (its pool commands are the Slurm spec's: the same ec2_nodes.py lines)."""
    builtin = yaml.safe_load(cloud_config(aws_spec(nodes={"min": MIN, "max": MAX}, scale_down_idle_minutes=2.5), 0))
    pools = [json.loads({f["path"]: f["content"] for f in data["write_files"]}["/opt/mpicloud/runner.base.json"])
             ["pool"] for data in (builtin, yaml.safe_load(cloud_config(_spec(), 0)))]
    assert pools[0] == pools[1]
    config = json.loads((head.root / "runner.json").read_text())
    for action in ("resume", "suspend"):  # this scratch head's places, as tests/cloud/test_aws_elastic.py does
        command = config["pool"][f"{action}_command"]
        assert command[:2] == ["/usr/bin/python3", "/opt/mpicloud/ec2_nodes.py"]
        command[1], command[4] = str(head.opt / "ec2_nodes.py"), str(head.root)
    (head.root / "runner.json").write_text(json.dumps(config))
    bin_dir = Path(head.env["PATH"].split(":")[0])
    for name, text in (("sudo", FAKE_SUDO), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    wrappers = {}
    for action in ("resume", "suspend"):
        text = _files(0)[f"/opt/mpicloud/slurm-{action}"]["content"]
        wrappers[action] = head.root.parent / f"slurm-{action}"
        wrappers[action].write_text(text.replace("/usr/bin/sudo", str(bin_dir / "sudo"))
                                    .replace("/opt/mpicloud", str(head.opt))
                                    .replace("/shared/.mpicloud", str(head.root)))
        wrappers[action].chmod(0o755)
    for node in ("node1", "node2"):
        (head.ready / node).touch()  # both answer the share probe once running
    ec2 = deployed.client("ec2")
    # slurmctld runs its programs with a bare environment (as SlurmUser)
    env = {"PATH": head.env["PATH"], "HOME": head.env["HOME"], "READY_DIR": str(head.ready)}
    done = subprocess.run([str(wrappers["resume"]), "node[1-2]"], env=env, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr + (head.root / "slurm" / "power.log").read_text()
    made = {n: elastic.instances(ec2, n) for n in ("node1", "node2")}
    assert [i["State"]["Name"] for n in made for i in made[n]] == ["running", "running"]
    ips = node_addresses(_spec().aws_options.subnet_cidr, 3)
    assert [made[n][0]["PrivateIpAddress"] for n in ("node1", "node2")] == ips[1:]  # slurm.conf's NodeAddr
    sudo = (head.ready / "sudo.log").read_text().splitlines()
    assert sudo == [f"sudo -n -u mpiadmin /usr/bin/python3 {head.opt}/slurm_power.py --root {head.root} resume -- "
                    "node[1-2]"]
    log = (head.root / "slurm" / "power.log").read_text()
    assert "resume node[1-2]: node1 node2" in log and "resume node1: done" in log and "resume node2: done" in log
    done = subprocess.run([str(wrappers["suspend"]), "node[1-2]"], env=env, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr
    states = {i["State"]["Name"] for n in ("node1", "node2") for i in elastic.instances(ec2, n)}
    assert states <= {"stopping", "stopped"}
    assert not (head.ready / "scontrol.log").exists()  # no node was set DOWN


def test_a_failed_resume_sets_the_node_down_as_slurm_user(tmp_path: Path) -> None:
    """runner.json's slurm_admin: slurm_power.py (the cluster's user) sets a node whose resume failed DOWN through
    `sudo -n -u slurm scontrol` (only root and SlurmUser may change node states without accounting)."""
    bin_dir, ready = tmp_path / "bin", tmp_path / "ready"
    for folder in (bin_dir, ready):
        folder.mkdir()
    for name, text in (("sudo", FAKE_SUDO), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    root = tmp_path / "runner"
    root.mkdir()
    (root / "runner.json").write_text(json.dumps({"slurm_admin": SLURM_ADMIN, "pool": {
        "resume_command": ["sh", "-c", '[ "$0" = node1 ]'], "suspend_command": ["true"]}}))
    done = subprocess.run(["/usr/bin/python3", str(provision_dir() / "slurm" / "slurm_power.py"), "--root",
                           str(root), "resume", "--", "node[1-2]"], capture_output=True, text=True, timeout=60,
                          env={"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "READY_DIR": str(ready)})
    assert done.returncode == 1
    assert (ready / "sudo.log").read_text().startswith("sudo -n -u slurm scontrol update NodeName=node2 State=DOWN ")
    assert (ready / "scontrol.log").read_text().startswith("scontrol update NodeName=node2 State=DOWN Reason=mpicloud "
                                                           "resume failed (exit 1, see ")
