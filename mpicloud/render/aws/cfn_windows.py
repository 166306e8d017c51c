"""CloudFormation template of a Windows MS-MPI cluster (templates/cloudformation/windows-cluster.json), Launch Stack
ready: the Linux template's network, security group, node role and node-count conditions, plus RDP from the allowed
network, a generated administrator password in Secrets Manager, the bootstrap in SSM and EC2Launch v2 user data. An
elastic spec gives the head node alone and a launch template its runner starts compute nodes from, as the Linux
template does (templates/cloudformation/windows-cluster-elastic.json)."""

from __future__ import annotations

import json
from typing import Any

from mpicloud.errors import RenderError
from mpicloud.render import cloudformation as cfn
from mpicloud.render.aws import RDP_PORT, TAG_INDEX, TAG_LAUNCH_TEMPLATE, TAG_SECRET, admin_secret_policy
from mpicloud.render.aws import powershell as aws_powershell
from mpicloud.render.aws.cloud_init import node_addresses
from mpicloud.render.windows_bootstrap import bootstrap_ps1
from mpicloud.spec.load import spec_from_dict
from mpicloud.spec.model import ClusterSpec

#: the root device of the Windows AMIs
ROOT_DEVICE = "/dev/sda1"
_ref = cfn._ref
#: what a generated password leaves out: characters that need quoting in shells, JSON or PowerShell
_EXCLUDED = "\"'`\\/@$ ;|&<>"


def template_spec() -> ClusterSpec:
    """The spec the checked-in template is generated from: every template node's address in the bootstrap."""
    return spec_from_dict({"name": "mpicloud", "cloud": "aws", "os": "windows", "nodes": cfn.MAX_TEMPLATE_NODES,
                           "size": "c5.xlarge", "region": "us-east-1",
                           "admin": {"password": {"env": "MPICLOUD_ADMIN_PASSWORD"}},
                           "aws": {"subnet_cidr": "10.0.0.0/23"}})


def elastic_template_spec() -> ClusterSpec:
    """The spec of the checked-in elastic template (cloudformation.elastic_of the Windows template's)."""
    return cfn.elastic_of(template_spec())


def _parameters(spec: ClusterSpec) -> dict[str, Any]:
    params = {k: v for k, v in cfn._parameters(spec).items() if k not in ("KeyName", "SharedVolumeGb")}
    params["LatestImageId"] = {**params["LatestImageId"], "Description": (
        "SSM parameter of the Windows Server 2022 AMI, used while ImageId is empty. CloudFormation resolves it "
        "again on EVERY stack update: a newer image replaces every node unless ImageId pins the one in use")}
    params["AllowedSshCidr"] = {**params["AllowedSshCidr"],
                                "Description": "the only network allowed to reach SSH and RDP, e.g. 203.0.113.0/24"}
    return params


def _windows(roles: list[str]) -> dict[str, Any]:
    """RDP from the allowed network, the generated password and the node roles' read access to it only."""
    return {
        "RdpIngress": {"Type": "AWS::EC2::SecurityGroupIngress", "Properties": {
            "GroupId": _ref("SecurityGroup"), "IpProtocol": "tcp", "FromPort": RDP_PORT, "ToPort": RDP_PORT,
            "CidrIp": _ref("AllowedSshCidr"), "Description": "RDP from the allowed network only"}},
        "AdminPassword": {"Type": "AWS::SecretsManager::Secret", "DeletionPolicy": "Delete",
                          "UpdateReplacePolicy": "Delete", "Properties": {
                              "Description": {"Fn::Sub": "mpicloud ${AWS::StackName}: Windows administrator password"},
                              "GenerateSecretString": {"PasswordLength": 24, "ExcludeCharacters": _EXCLUDED,
                                                       "RequireEachIncludedType": True},
                              "Tags": cfn._tags()}},
        "NodeAdminPasswordPolicy": {"Type": "AWS::IAM::Policy", "Properties": {
            "PolicyName": "admin-password", "Roles": [_ref(r) for r in roles],
            "PolicyDocument": admin_secret_policy(_ref("AdminPassword"))}},
    }


def _parts(script: str) -> dict[str, Any]:
    """The bootstrap as SSM String parameters every node joins at boot."""
    return {f"BootstrapPart{i}": {"Type": "AWS::SSM::Parameter", "Properties": {
        "Name": {"Fn::Sub": name}, "Type": "String", "Value": value, "Tier": "Standard",
        "Description": "mpicloud Windows bootstrap (gzip+base64 piece)",
        "Tags": {"mpicloud:cluster": {"Ref": "AWS::StackName"}}}}
        for i, (name, value) in enumerate(sorted(aws_powershell.script_parameters(cfn.PREFIX, script).items()))}


def _node_tags(spec: ClusterSpec) -> dict[str, Any]:
    """The tags every Windows node reads at boot (its index aside)."""
    return {**cfn.node_tags_of(spec), TAG_SECRET: _ref("AdminPassword")}


def _node(spec: ClusterSpec, index: int, ips: list[str], parts: list[str]) -> dict[str, Any]:
    head = index == 0 and spec.elastic is not None  # the elastic head: its own role, and the compute template's id
    tags = {**_node_tags(spec), TAG_INDEX: str(index), "Name": {"Fn::Sub": f"${{AWS::StackName}}-N{index}"},
            **({TAG_LAUNCH_TEMPLATE: _ref("ComputeLaunchTemplate")} if head else {})}
    node: dict[str, Any] = {"Type": "AWS::EC2::Instance",
                            "DependsOn": ["DefaultRoute", "NodeSecretsPolicy", "NodeAdminPasswordPolicy", *parts],
                            "Properties": {
        "LaunchTemplate": {"LaunchTemplateId": _ref("NodeLaunchTemplate"),
                           "Version": {"Fn::GetAtt": ["NodeLaunchTemplate", "LatestVersionNumber"]}},
        "ImageId": cfn.IMAGE, "InstanceType": _ref("InstanceType"),
        "IamInstanceProfile": _ref("HeadProfile" if head else "NodeProfile"),
        "NetworkInterfaces": [{"DeviceIndex": "0", "SubnetId": _ref("Subnet"), "PrivateIpAddress": ips[index],
                               "GroupSet": [_ref("SecurityGroup")], "AssociatePublicIpAddress": True,
                               "DeleteOnTermination": True}],
        "Tags": cfn._tags(tags)}}
    if index:
        node["Condition"] = f"HasNode{index}"
    return node


def _outputs(spec: ClusterSpec) -> dict[str, Any]:
    user = spec.admin.username
    return {
        **cfn.elastic_outputs(spec),
        "HeadPublicIp": {"Description": "public address of N0 (the head node)",
                         "Value": {"Fn::GetAtt": ["Node0", "PublicIp"]}},
        "AttachCommand": {"Description": "register the cluster with mpicloud (the password from the secret, in the "
                                         "variable)",
                          "Value": {"Fn::Sub": spec.target.attach_command(
                              "NAME", "${Node0.PublicIp}", user, "${SlotsPerNode}", "MPICLOUD_ADMIN_PASSWORD")}},
        "AdminPasswordSecret": {"Description": "the administrator password's secret (its ARN, never the value): aws "
                                               "secretsmanager get-secret-value --secret-id ARN --query SecretString",
                                "Value": _ref("AdminPassword")},
        "ImageId": {"Description": "the AMI of the nodes: pass it as the ImageId parameter on every update",
                    "Value": cfn.IMAGE},
    }


def windows_template(spec: ClusterSpec | None = None) -> dict[str, Any]:
    """The Windows cluster template as a dict (elastic spec: the head node and the compute launch template)."""
    spec = spec or template_spec()
    elastic = spec.elastic is not None
    nodes = 1 if elastic else cfn.MAX_TEMPLATE_NODES
    if spec.node_count > cfn.MAX_TEMPLATE_NODES:
        raise RenderError(f"the CloudFormation template has at most {cfn.MAX_TEMPLATE_NODES} nodes; use Pulumi for "
                          f"{spec.node_count}")
    ips = node_addresses(spec.aws_options.subnet_cidr, spec.node_count if elastic else cfn.MAX_TEMPLATE_NODES)
    script = bootstrap_ps1(spec)
    parts = _parts(script)
    # every node's user data is the same (a node reads its index from its tags): the head keeps it
    user_data = {"Fn::Base64": aws_powershell.user_data(spec, script)}
    resources = {**cfn._network(spec), **cfn._security(), **cfn._iam(elastic),
                 **_windows(["NodeRole", "HeadRole"] if elastic else ["NodeRole"]),
                 **cfn._launch_template(user_data, root_device=ROOT_DEVICE), **parts,
                 **(cfn.compute_launch_template(user_data, _node_tags(spec), root_device=ROOT_DEVICE, key=False)
                    if elastic else {})}
    resources.update({f"Node{i}": _node(spec, i, ips, sorted(parts)) for i in range(nodes)})
    kind = "elastic Windows MS-MPI cluster (head node; compute nodes started by its runner)" if elastic \
        else "Windows MS-MPI cluster"
    return {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": f"mpicloud {kind} (generated by mpicloud.render.aws.cfn_windows; do not edit)",
        "Parameters": _parameters(spec), "Conditions": cfn._conditions(nodes), "Resources": resources,
        "Outputs": _outputs(spec),
    }


def windows_template_json(spec: ClusterSpec | None = None) -> str:
    """templates/cloudformation/windows-cluster.json (indent 1, as the Linux template, under the size limit)."""
    text = json.dumps(windows_template(spec), sort_keys=True, indent=1) + "\n"
    if len(text.encode()) > cfn.TEMPLATE_LIMIT:
        raise RenderError(f"the Windows template is {len(text)} bytes; CloudFormation reads at most "
                          f"{cfn.TEMPLATE_LIMIT}")
    return text


def windows_elastic_template_json() -> str:
    """templates/cloudformation/windows-cluster-elastic.json: the head node and a launch template for 0 to 16
    compute nodes (elastic_template_spec)."""
    return windows_template_json(elastic_template_spec())
