"""What ec2_nodes.resume asks EC2 for when it launches (moto cannot hold a placement group): recorded calls."""

from __future__ import annotations

from typing import Any

from tests.runnerlib import node_module

ec2_nodes = node_module("ec2_nodes")


class Recorder:
    """An EC2 client with no instances that records run_instances and answers every describe with `running`."""

    def __init__(self) -> None:
        self.runs: list[dict[str, Any]] = []

    def get_paginator(self, name: str) -> Any:
        class Pages:
            def paginate(self, **_: Any) -> list[dict[str, Any]]:
                return [{"Reservations": []}]
        return Pages()

    def run_instances(self, **kwargs: Any) -> dict[str, Any]:
        self.runs.append(kwargs)
        return {"Instances": [{"InstanceId": "i-new", "State": {"Name": "pending"}}]}

    def describe_instances(self, **_: Any) -> dict[str, Any]:
        return {"Reservations": [{"Instances": [{"InstanceId": "i-new", "State": {"Name": "running"}}]}]}


def test_a_launch_uses_the_template_the_placement_group_and_the_cluster_tags() -> None:
    client = Recorder()
    settings = {"launch_template_id": "lt-1", "cluster": "demo", "placement_group": "demo-pg"}
    assert ec2_nodes.resume(client, settings, "node3") == "i-new"
    tags = [{"Key": "mpicloud:cluster", "Value": "demo"}, {"Key": "mpicloud:node", "Value": "node3"},
            {"Key": "Name", "Value": "demo-node3"}]
    assert client.runs == [{"LaunchTemplate": {"LaunchTemplateId": "lt-1", "Version": "$Latest"}, "MinCount": 1,
                            "MaxCount": 1,
                            "Placement": {"GroupName": "demo-pg"},
                            "TagSpecifications": [{"ResourceType": "instance", "Tags": tags},
                                                  {"ResourceType": "volume", "Tags": tags},
                                                  {"ResourceType": "network-interface", "Tags": tags}]}]


def test_wait_ready_with_ready_ports_waits_for_each_port_not_the_share_probe() -> None:
    import socket
    import time

    import pytest

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        config = {"pool": {"aws": {"ready_ports": [port]}}, "share_probe": ["false"], "share_marker": "/x"}
        started = time.monotonic()
        ec2_nodes.wait_ready(config, "127.0.0.1", timeout=20)  # the probe (`false`) would never answer
        assert time.monotonic() - started < 5
    with pytest.raises(TimeoutError, match=f"127.0.0.1 runs but its port {port} does not answer"):
        ec2_nodes.wait_ready(config, "127.0.0.1", timeout=0.1)
