"""Least privilege for the AWS head's node actions (provision/runner/ec2_nodes.py): launch only from the
cluster's launch template, tag only what that launch creates, start/stop/terminate only the cluster's
instances (by tag), pass only the node role to EC2."""

from __future__ import annotations

from typing import Any

from mpicloud.protocol.pool import CLUSTER_TAG


def node_actions_policy(cluster: str, region: str, account: str, launch_template_id: str, node_role_arn: str,
                        partition: str = "aws") -> dict[str, Any]:
    """The head role's policy for resuming and suspending the cluster's compute nodes (CloudFormation passes
    `${...}` placeholders and wraps the strings in Fn::Sub)."""
    ec2 = f"arn:{partition}:ec2:{region}:{account}"
    template = f"{ec2}:launch-template/{launch_template_id}"
    created = [f"{ec2}:instance/*", f"{ec2}:volume/*", f"{ec2}:network-interface/*"]
    from_template = {"StringEquals": {"ec2:LaunchTemplate": template}}
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "LaunchFromTheClusterTemplate", "Effect": "Allow", "Action": "ec2:RunInstances",
         "Resource": [template, f"{ec2}:subnet/*", f"{ec2}:security-group/*", f"{ec2}:placement-group/*",
                      f"arn:{partition}:ec2:{region}::image/*", f"{ec2}:key-pair/*"],
         "Condition": from_template},
        {"Sid": "LaunchTaggedWithTheCluster", "Effect": "Allow", "Action": "ec2:RunInstances",
         "Resource": created,
         "Condition": {"StringEquals": {"ec2:LaunchTemplate": template, f"aws:RequestTag/{CLUSTER_TAG}": cluster}}},
        {"Sid": "TagOnlyAtLaunch", "Effect": "Allow", "Action": "ec2:CreateTags", "Resource": created,
         "Condition": {"StringEquals": {"ec2:CreateAction": "RunInstances"}}},
        {"Sid": "StartStopTheClusterNodes", "Effect": "Allow",
         "Action": ["ec2:StartInstances", "ec2:StopInstances", "ec2:TerminateInstances"],
         "Resource": f"{ec2}:instance/*",
         "Condition": {"StringEquals": {f"ec2:ResourceTag/{CLUSTER_TAG}": cluster}}},
        # read-only and without resource-level permissions: the node's state, the template's network interface
        {"Sid": "SeeInstances", "Effect": "Allow",
         "Action": ["ec2:DescribeInstances", "ec2:DescribeLaunchTemplateVersions"], "Resource": "*"},
        {"Sid": "PassTheNodeRole", "Effect": "Allow", "Action": "iam:PassRole", "Resource": node_role_arn,
         "Condition": {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}}},
    ]}
