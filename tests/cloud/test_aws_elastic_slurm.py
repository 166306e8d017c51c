"""An elastic AWS Linux cluster with Slurm (`scheduler: slurm`, `nodes: {min, max}`), offline: the CloudFormation
template (cfn-lint), the real slurm_power.py running the rendered wrapper's command line, which runs the pool's
ec2_nodes.py against a moto deployment, and what the sudoers rule lets through. What every node's boot writes
(slurm.conf, the wrappers, the sudoers rule): tests/cloud/test_cloud_elastic_slurm.py, for AWS and Azure."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

from mpicloud.assets import install_runner, provision_dir
from mpicloud.render.aws.cloud_init import cloud_config, node_addresses, user_data_base64
from mpicloud.render.cloud_config import SLURM_ADMIN
from mpicloud.render.cloudformation import cluster_template
from mpicloud.spec import ClusterSpec
from tests.cloud import test_aws_elastic as elastic
from tests.cloud import test_cloud_elastic_slurm as power
from tests.specdata import aws_spec

LINUX = provision_dir() / "linux"
MAX, MIN = 3, 1
#: the moto deployment of the elastic template and its head's runner.json (fixtures of test_aws_elastic.py)
deployed, head = elastic.deployed, elastic.head


def _spec(**overrides: object) -> ClusterSpec:
    return aws_spec(scheduler="slurm", nodes={"min": MIN, "max": MAX}, scale_down_idle_minutes=2.5, **overrides)


def _files(index: int | None, spec: ClusterSpec | None = None) -> dict[str, dict[str, str]]:
    return {f["path"]: f for f in yaml.safe_load(cloud_config(spec or _spec(), index))["write_files"]}


def test_the_power_wrapper_refuses_anything_but_one_hostlist(tmp_path: Path) -> None:
    """What the sudoers rule lets through (`-- *`) cannot become a second --root or another action: the real
    slurm_power.py takes Slurm's hostlist after `--` only (argparse)."""
    script = install_runner(tmp_path / "opt").with_name("slurm_power.py")
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


# -- slurm_power.py through the rendered wrapper, running the pool's ec2_nodes.py against moto ---------------------

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
    wrappers = power.install_wrappers(_files(0), bin_dir, head.opt, head.root)
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
    power.install_fakes(bin_dir)
    root = tmp_path / "runner"
    root.mkdir()
    (root / "runner.json").write_text(json.dumps({"slurm_admin": SLURM_ADMIN, "pool": {
        "resume_command": ["sh", "-c", '[ "$0" = node1 ]'], "suspend_command": ["true"]}}))
    script = install_runner(tmp_path / "opt").with_name("slurm_power.py")
    done = subprocess.run(["/usr/bin/python3", str(script), "--root", str(root), "resume", "--", "node[1-2]"],
                          capture_output=True, text=True, timeout=60,
                          env={"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "READY_DIR": str(ready)})
    assert done.returncode == 1
    sudo = (ready / "sudo.log").read_text().splitlines()
    assert sudo[0].startswith("sudo -n -u slurm scontrol update NodeName=node2 State=DOWN ")
    assert sudo[1] == "sudo -n -u slurm scontrol update NodeName=node2 State=POWER_DOWN_FORCE"
    assert (ready / "scontrol.log").read_text().startswith("scontrol update NodeName=node2 State=DOWN Reason=mpicloud "
                                                           "resume failed (exit 1, see ")
