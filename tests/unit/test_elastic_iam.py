"""The AWS head's node-action policy, checked with the IAM evaluator: the cluster's template and tag only."""

from __future__ import annotations

import pytest

from mpicloud.render.elastic_iam import CLUSTER_TAG, node_actions_policy
from mpicloud.render.iam_check import evaluate

EC2 = "arn:aws:ec2:eu-west-1:111122223333"
TEMPLATE = f"{EC2}:launch-template/lt-0abc"
POLICY = node_actions_policy("demo", "eu-west-1", "111122223333", "lt-0abc", "arn:aws:iam::111122223333:role/node")


def test_exactly_these_actions_are_granted() -> None:
    actions = sorted({a for s in POLICY["Statement"] for a in ([s["Action"]] if isinstance(s["Action"], str)
                                                              else s["Action"])})
    assert actions == ["ec2:CreateTags", "ec2:DescribeInstances", "ec2:DescribeLaunchTemplateVersions",
                       "ec2:RunInstances", "ec2:StartInstances",
                       "ec2:StopInstances", "ec2:TerminateInstances", "iam:PassRole"]
    assert all(s["Effect"] == "Allow" for s in POLICY["Statement"])


@pytest.mark.parametrize(("resource", "context", "decision"), [
    (TEMPLATE, {"ec2:LaunchTemplate": TEMPLATE}, "allow"),
    (f"{EC2}:launch-template/lt-other", {"ec2:LaunchTemplate": f"{EC2}:launch-template/lt-other"}, "implicit-deny"),
    (f"{EC2}:instance/i-1", {"ec2:LaunchTemplate": TEMPLATE, f"aws:RequestTag/{CLUSTER_TAG}": "demo"}, "allow"),
    (f"{EC2}:instance/i-1", {"ec2:LaunchTemplate": TEMPLATE, f"aws:RequestTag/{CLUSTER_TAG}": "other"},
     "implicit-deny"),
    (f"{EC2}:instance/i-1", {"ec2:LaunchTemplate": TEMPLATE}, "implicit-deny"),  # untagged
    (f"{EC2}:instance/i-1", {f"aws:RequestTag/{CLUSTER_TAG}": "demo"}, "implicit-deny"),  # no template
    (f"{EC2}:subnet/subnet-1", {}, "implicit-deny"),
])
def test_run_instances_only_from_the_template_tagged_with_the_cluster(resource: str, context: dict[str, str],
                                                                      decision: str) -> None:
    assert evaluate(POLICY, "ec2:RunInstances", resource, context) == decision


@pytest.mark.parametrize("action", ["ec2:StartInstances", "ec2:StopInstances", "ec2:TerminateInstances"])
def test_start_stop_terminate_only_the_cluster_instances(action: str) -> None:
    instance = f"{EC2}:instance/i-1"
    assert evaluate(POLICY, action, instance, {f"ec2:ResourceTag/{CLUSTER_TAG}": "demo"}) == "allow"
    assert evaluate(POLICY, action, instance, {f"ec2:ResourceTag/{CLUSTER_TAG}": "other"}) == "implicit-deny"
    assert evaluate(POLICY, action, instance, {}) == "implicit-deny"
    assert evaluate(POLICY, action, "arn:aws:ec2:us-east-1:111122223333:instance/i-1",
                    {f"ec2:ResourceTag/{CLUSTER_TAG}": "demo"}) == "implicit-deny"  # another region


def test_tags_only_at_launch_and_the_node_role_only_to_ec2() -> None:
    volume = f"{EC2}:volume/vol-1"
    assert evaluate(POLICY, "ec2:CreateTags", volume, {"ec2:CreateAction": "RunInstances"}) == "allow"
    assert evaluate(POLICY, "ec2:CreateTags", volume, {}) == "implicit-deny"  # retagging someone's volume
    role = "arn:aws:iam::111122223333:role/node"
    assert evaluate(POLICY, "iam:PassRole", role, {"iam:PassedToService": "ec2.amazonaws.com"}) == "allow"
    assert evaluate(POLICY, "iam:PassRole", role, {"iam:PassedToService": "lambda.amazonaws.com"}) == "implicit-deny"
    assert evaluate(POLICY, "iam:PassRole", "arn:aws:iam::111122223333:role/admin",
                    {"iam:PassedToService": "ec2.amazonaws.com"}) == "implicit-deny"
