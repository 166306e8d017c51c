"""The AWS head's node actions (provision/runner/ec2_nodes.py) against a real moto server: instances from the
cluster's launch template in its placement group, tagged with the cluster and node; stop, start, terminate."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.integration.s3server import moto_server
from tests.runnerlib import RUNNER, node_module

ec2_nodes = node_module("ec2_nodes")
REGION = "eu-west-1"


@pytest.fixture()
def world(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, dict[str, Any]]]:
    """moto server, an EC2 client, a launch template, the pool's `aws` settings."""
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "testing")
    with moto_server() as endpoint:
        ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=endpoint)
        image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
        template = ec2.create_launch_template(LaunchTemplateName="demo-nodes", LaunchTemplateData={
            "ImageId": image, "InstanceType": "c6i.large"})["LaunchTemplate"]["LaunchTemplateId"]
        # moto answers CreatePlacementGroup with a 500: the group is checked with a recording client (unit test)
        yield ec2, {"region": REGION, "launch_template_id": template, "cluster": "demo",
                    "suspend": "stop", "endpoint_url": endpoint}


def _instances(ec2: Any) -> list[dict[str, Any]]:
    return [i for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]]


def _tags(instance: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in instance.get("Tags", [])}


def test_resume_launches_from_the_template_then_stop_and_start_keep_the_instance(
        world: tuple[Any, dict[str, Any]]) -> None:
    ec2, settings = world
    first = ec2_nodes.resume(ec2, settings, "node1")
    assert ec2_nodes.resume(ec2, settings, "node1") == first  # idempotent: no second instance
    [made] = _instances(ec2)
    assert made["InstanceId"] == first and made["State"]["Name"] == "running"
    assert made["InstanceType"] == "c6i.large"  # from the launch template
    assert _tags(made) == {"mpicloud:cluster": "demo", "mpicloud:node": "node1", "Name": "demo-node1",
                           "aws:ec2launchtemplate:id": settings["launch_template_id"],
                           "aws:ec2launchtemplate:version": "1"}
    assert ec2_nodes.suspend(ec2, settings, "node1") == first
    assert _instances(ec2)[0]["State"]["Name"] == "stopped"
    assert ec2_nodes.resume(ec2, settings, "node1") == first  # the same disk back
    assert _instances(ec2)[0]["State"]["Name"] == "running"


def test_terminate_mode_and_other_clusters_instances(world: tuple[Any, dict[str, Any]]) -> None:
    ec2, settings = world
    other = ec2_nodes.resume(ec2, {**settings, "cluster": "other"}, "node1")
    mine = ec2_nodes.resume(ec2, settings, "node1")
    assert mine != other
    assert ec2_nodes.suspend(ec2, {**settings, "suspend": "terminate"}, "node1") == mine
    states = {i["InstanceId"]: i["State"]["Name"] for i in _instances(ec2)}
    assert states == {mine: "terminated", other: "running"}
    assert ec2_nodes.suspend(ec2, settings, "node1") is None  # nothing left to stop
    assert ec2_nodes.resume(ec2, settings, "node1") not in (mine, other)  # a fresh one from the template


def test_the_pool_command_line_reads_runner_json(world: tuple[Any, dict[str, Any]], tmp_path: Path) -> None:
    ec2, settings = world
    (tmp_path / "runner.json").write_text(json.dumps({"pool": {"aws": settings}}))
    script = str(RUNNER.with_name("ec2_nodes.py"))
    for action, state in (("resume", "running"), ("suspend", "stopped")):
        done = subprocess.run([sys.executable, script, action, "--root", str(tmp_path), "node2"],
                              capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"{action} node2: i-")
        assert [i["State"]["Name"] for i in _instances(ec2)] == [state]
