"""AWS node actions for the runner's pool, run on the head with its instance role: `resume NODE` starts the
node's stopped instance or launches one from the cluster's launch template (in its placement group, tagged
with the cluster and the node); `suspend NODE` stops or terminates it. Idempotent; boto3 (python3-boto3 on
the head) is imported only here, only when an action runs.

Settings: runner.json `pool.aws`: region, launch_template_id, cluster, placement_group (optional),
suspend ("stop": keep the disk, bill it; "terminate": bill nothing), endpoint_url (tests: moto server).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the protocol package installed beside this file
from mpicloud.protocol.pool import CLUSTER_TAG, NODE_TAG

LIVE = ("pending", "running", "stopping", "stopped")


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
        tags = [{"Key": CLUSTER_TAG, "Value": settings["cluster"]}, {"Key": NODE_TAG, "Value": node}]
        placement = {"GroupName": settings["placement_group"]} if settings.get("placement_group") else {}
        made = ec2.run_instances(
            LaunchTemplate={"LaunchTemplateId": settings["launch_template_id"]}, MinCount=1, MaxCount=1,
            TagSpecifications=[{"ResourceType": t, "Tags": tags} for t in ("instance", "volume")],
            **({"Placement": placement} if placement else {}))
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


def _wait(ec2: Any, instance_id: str, states: set[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        found = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
        if found["State"]["Name"] in states:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"instance {instance_id} is {found['State']['Name']}, not {'/'.join(states)}")
        time.sleep(2.0)


def main(argv: list[str]) -> int:
    """`ec2_nodes.py resume|suspend NODE --root ROOT` (the pool's resume_command/suspend_command)."""
    action, node, root = argv[0], argv[-1], Path(argv[argv.index("--root") + 1])
    settings = json.loads((root / "runner.json").read_text(encoding="utf-8"))["pool"]["aws"]
    ec2 = client(settings)
    done = resume(ec2, settings, node) if action == "resume" else suspend(ec2, settings, node)
    print(f"{action} {node}: {done or 'no instance'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
