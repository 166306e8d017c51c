"""AWS node actions for the runner's pool, run on the head with its instance role: `resume NODE` starts the
node's stopped instance or launches one from the cluster's launch template (in its placement group, tagged
with the cluster and the node); `suspend NODE` stops or terminates it. Idempotent; boto3 (python3-boto3 on
the head) is imported only here, only when an action runs.

Settings: runner.json `pool.aws`: region, launch_template_id, cluster, placement_group (optional),
suspend ("stop": keep the disk, bill it; "terminate": bill nothing), addresses (optional: node -> its fixed
private address, launched on the template's network interface), node_tags (optional: node -> more launch
tags, e.g. a Windows node's index), ready_ports (optional), endpoint_url (tests: moto server). runner.json's
`object_libs` (or MPICLOUD_OBJECT_LIBS) names where boto3 is when the Python lacks it (Windows).

From the command line `resume` returns only once the node is usable: its instance runs and it answers on each
of `ready_ports` (Windows: sshd and MS-MPI's launch service) or, without them, the runner's share probe
(runner.json `share_probe` + NODE: its boot finished and it sees `share_marker`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the protocol package installed beside this file
from mpicloud.protocol.objects import use_object_libs
from mpicloud.protocol.pool import CLUSTER_TAG, NODE_TAG, wait_ports

LIVE = ("pending", "running", "stopping", "stopped")
#: the launch template's newest version: a stack or program update makes one (whether it also becomes the default
#: differs between CloudFormation and Pulumi); running nodes keep theirs
VERSION = "$Latest"
#: runner.json pool.aws settings every action needs
REQUIRED = ("region", "launch_template_id", "cluster")
#: what a launch creates and tags with the cluster and node (the head's policy requires the cluster tag on each)
TAGGED = ("instance", "volume", "network-interface")
#: cloud-init writes it when the node's boot (mounts, keys, software) is done
BOOT_FINISHED = "/var/lib/cloud/instance/boot-finished"


def client(settings: dict[str, Any]) -> Any:
    import boto3  # the head's own SDK: loaded only for a node action

    return boto3.client("ec2", region_name=settings["region"], endpoint_url=settings.get("endpoint_url"))


def find(ec2: Any, settings: dict[str, Any], node: str) -> dict[str, Any] | None:
    """The node's instance that is not terminated (or shutting down), if any."""
    pages = ec2.get_paginator("describe_instances").paginate(Filters=[
        {"Name": f"tag:{CLUSTER_TAG}", "Values": [settings["cluster"]]},
        {"Name": f"tag:{NODE_TAG}", "Values": [node]},
        {"Name": "instance-state-name", "Values": list(LIVE)}])
    found = [i for page in pages for r in page["Reservations"] for i in r["Instances"]]
    return found[0] if found else None


def resume(ec2: Any, settings: dict[str, Any], node: str, timeout: float = 600.0) -> str:
    """Start the node (launch it when it has no instance); return its instance id once it runs."""
    instance = find(ec2, settings, node)
    if instance is None:
        tags = [{"Key": CLUSTER_TAG, "Value": settings["cluster"]}, {"Key": NODE_TAG, "Value": node},
                {"Key": "Name", "Value": f"{settings['cluster']}-{node}"},  # as a fixed cluster's nodes are named
                *({"Key": k, "Value": v} for k, v in ((settings.get("node_tags") or {}).get(node) or {}).items())]
        placement = {"GroupName": settings["placement_group"]} if settings.get("placement_group") else {}
        made = ec2.run_instances(
            LaunchTemplate={"LaunchTemplateId": settings["launch_template_id"], "Version": VERSION},
            MinCount=1, MaxCount=1,
            TagSpecifications=[{"ResourceType": t, "Tags": tags} for t in TAGGED],
            **({"Placement": placement} if placement else {}), **_address(ec2, settings, node))
        instance = made["Instances"][0]
    elif instance["State"]["Name"] in ("stopped", "stopping"):
        _wait(ec2, instance["InstanceId"], {"stopped"}, timeout)
        ec2.start_instances(InstanceIds=[instance["InstanceId"]])
    _wait(ec2, instance["InstanceId"], {"running"}, timeout)
    return str(instance["InstanceId"])


def suspend(ec2: Any, settings: dict[str, Any], node: str) -> str | None:
    """Stop (or terminate) the node's instance; None when it has none."""
    instance = find(ec2, settings, node)
    if instance is None:
        return None
    ids = [instance["InstanceId"]]
    if settings.get("suspend", "stop") == "terminate":
        ec2.terminate_instances(InstanceIds=ids)
    elif instance["State"]["Name"] not in ("stopped", "stopping"):
        ec2.stop_instances(InstanceIds=ids)
    return str(ids[0])


def _address(ec2: Any, settings: dict[str, Any], node: str) -> dict[str, Any]:
    """RunInstances' NetworkInterfaces: the launch template's own interface with the node's fixed private
    address (the name every node's /etc/hosts gives it); nothing when the settings name no address."""
    address = (settings.get("addresses") or {}).get(node)
    if address is None:
        return {}
    data = ec2.describe_launch_template_versions(LaunchTemplateId=settings["launch_template_id"],
                                                 Versions=[VERSION])["LaunchTemplateVersions"][0]
    [interface] = data["LaunchTemplateData"]["NetworkInterfaces"]
    return {"NetworkInterfaces": [{**interface, "PrivateIpAddress": address}]}


def forget_host_key(config: dict[str, Any], node: str) -> None:
    """Drop the node's old host key (by name and address) from the head's known_hosts before it is launched
    afresh: the new instance has a new key, which `StrictHostKeyChecking accept-new` then takes."""
    known = Path.home() / ".ssh" / "known_hosts"
    if known.is_file() and shutil.which("ssh-keygen"):
        address = (config["pool"]["aws"].get("addresses") or {}).get(node)
        for name in filter(None, (node, address)):
            subprocess.run(["ssh-keygen", "-R", name, "-f", str(known)], capture_output=True, check=False)


def wait_ready(config: dict[str, Any], node: str, timeout: float = 1800.0) -> None:
    """Until each of pool.aws `ready_ports` answers or, without them, the node answers the runner's share probe
    (runner.json `share_probe`): its boot (cloud-init) finished and it sees the share marker."""
    ports = config["pool"]["aws"].get("ready_ports")
    if ports:
        wait_ports(node, list(ports), time.monotonic() + timeout, 5.0)
        return
    probe, marker = config.get("share_probe"), config.get("share_marker")
    if not (probe and marker):
        return
    test = f"test -f {BOOT_FINISHED} -a -f {marker}"
    deadline = time.monotonic() + timeout
    while not _answers([*probe, node, test]):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{node} runs but did not finish its boot or see {marker} in {timeout:.0f} s")
        time.sleep(5.0)


def _answers(argv: list[str]) -> bool:
    try:
        return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=120,
                              check=False).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def _wait(ec2: Any, instance_id: str, states: set[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        found = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
        if found["State"]["Name"] in states:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"instance {instance_id} is {found['State']['Name']}, not {'/'.join(states)}")
        time.sleep(2.0)


def act(action: str, node: str, root: Path) -> str | None:
    """Run one node action with the settings of ROOT/runner.json; the instance id (None: nothing to suspend)."""
    config = json.loads((root / "runner.json").read_text(encoding="utf-8"))
    settings = (config.get("pool") or {}).get("aws") or {}
    for key in REQUIRED:
        if not isinstance(settings.get(key), str) or not settings[key]:
            raise ValueError(f"{root / 'runner.json'}: pool.aws.{key} is missing")
    use_object_libs(config.get("object_libs"))
    ec2 = client(settings)
    if action == "suspend":
        return suspend(ec2, settings, node)
    if find(ec2, settings, node) is None:
        forget_host_key(config, node)  # before the launch: a runner killed after it still finds the key gone
    done = resume(ec2, settings, node)
    wait_ready(config, node)
    return done


def main(argv: list[str]) -> int:
    """`ec2_nodes.py resume|suspend --root ROOT NODE` (the pool's resume_command/suspend_command, the node name
    appended); one line on stderr and exit 1 when it fails (the pool retries)."""
    if len(argv) != 4 or argv[0] not in ("resume", "suspend") or argv[1] != "--root":
        print("usage: ec2_nodes.py resume|suspend --root ROOT NODE", file=sys.stderr)
        return 2
    action, root, node = argv[0], Path(argv[2]), argv[3]
    try:
        done = act(action, node, root)
    except (OSError, KeyError, ValueError, TimeoutError) as exc:
        print(f"{action} {node}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # botocore's errors (ClientError, NoCredentialsError, ...): the SDK is loaded lazily
        if not type(exc).__module__.startswith("botocore"):
            raise
        print(f"{action} {node}: {exc}", file=sys.stderr)
        return 1
    print(f"{action} {node}: {done or 'no instance'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
