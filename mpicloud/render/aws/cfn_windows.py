"""CloudFormation template of a Windows MS-MPI cluster (templates/cloudformation/windows-cluster.json), Launch Stack
ready: the Linux template's network, security group, node role and node-count conditions, plus RDP from the allowed
network, a generated administrator password in Secrets Manager, the bootstrap in SSM and EC2Launch v2 user data."""

from __future__ import annotations

import json
from typing import Any

from mpicloud.errors import RenderError
from mpicloud.render import cloudformation as cfn
from mpicloud.render.aws import METADATA_OPTIONS, RDP_PORT, admin_secret_policy, node_tags
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


def _parameters(spec: ClusterSpec) -> dict[str, Any]:
    params = {k: v for k, v in cfn._parameters(spec).items() if k not in ("KeyName", "SharedVolumeGb")}
    params["LatestImageId"] = {**params["LatestImageId"], "Description": (
        "SSM parameter of the Windows Server 2022 AMI, used while ImageId is empty. CloudFormation resolves it "
        "again on EVERY stack update: a newer image replaces every node unless ImageId pins the one in use")}
    params["AllowedSshCidr"] = {**params["AllowedSshCidr"],
                                "Description": "the only network allowed to reach SSH and RDP, e.g. 203.0.113.0/24"}
    return params


def _windows() -> dict[str, Any]:
    """RDP from the allowed network, the generated password and the node role's read access to it only."""
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
            "PolicyName": "admin-password", "Roles": [_ref("NodeRole")],
            "PolicyDocument": admin_secret_policy(_ref("AdminPassword"))}},
    }


def _launch_template(user_data: str) -> dict[str, Any]:
    data = {
        "UserData": {"Fn::Base64": user_data},
        "MetadataOptions": {"".join(w.capitalize() for w in k.split("_")): v for k, v in METADATA_OPTIONS.items()},
        "BlockDeviceMappings": [{"DeviceName": ROOT_DEVICE, "Ebs": {
            "Encrypted": True, "VolumeSize": _ref("RootVolumeGb"), "VolumeType": "gp3", "DeleteOnTermination": True}}],
        "Placement": {"GroupName": _ref("PlacementGroup")}, "EbsOptimized": True, "Monitoring": {"Enabled": True},
        "InstanceInitiatedShutdownBehavior": "stop",
        "TagSpecifications": [{"ResourceType": "volume", "Tags": cfn._tags()}],
    }
    return {"NodeLaunchTemplate": {"Type": "AWS::EC2::LaunchTemplate", "Properties": {
        "LaunchTemplateData": data, "TagSpecifications": [{"ResourceType": "launch-template", "Tags": cfn._tags()}]}}}


def _parts(script: str) -> dict[str, Any]:
    """The bootstrap as SSM String parameters every node joins at boot."""
    return {f"BootstrapPart{i}": {"Type": "AWS::SSM::Parameter", "Properties": {
        "Name": {"Fn::Sub": name}, "Type": "String", "Value": value, "Tier": "Standard",
        "Description": "mpicloud Windows bootstrap (gzip+base64 piece)",
        "Tags": {"mpicloud:cluster": {"Ref": "AWS::StackName"}}}}
        for i, (name, value) in enumerate(sorted(aws_powershell.script_parameters(cfn.PREFIX, script).items()))}


def _node(index: int, ips: list[str], parts: list[str]) -> dict[str, Any]:
    tags = {**node_tags(_ref("NodeCount"), _ref("SlotsPerNode"), {"Fn::Sub": cfn.PREFIX},
                        _ref("IdleShutdownMinutes"), _ref("SecretsKey")),
            aws_powershell.TAG_INDEX: str(index), aws_powershell.TAG_SECRET: _ref("AdminPassword"),
            "Name": {"Fn::Sub": f"${{AWS::StackName}}-N{index}"}}
    node: dict[str, Any] = {"Type": "AWS::EC2::Instance",
                            "DependsOn": ["DefaultRoute", "NodeSecretsPolicy", "NodeAdminPasswordPolicy", *parts],
                            "Properties": {
        "LaunchTemplate": {"LaunchTemplateId": _ref("NodeLaunchTemplate"),
                           "Version": {"Fn::GetAtt": ["NodeLaunchTemplate", "LatestVersionNumber"]}},
        "ImageId": cfn.IMAGE, "InstanceType": _ref("InstanceType"), "IamInstanceProfile": _ref("NodeProfile"),
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
    """The Windows cluster template as a dict."""
    spec = spec or template_spec()
    ips = node_addresses(spec.aws_options.subnet_cidr, cfn.MAX_TEMPLATE_NODES)
    script = bootstrap_ps1(spec)
    parts = _parts(script)
    resources = {**cfn._network(spec), **cfn._security(), **cfn._iam(), **_windows(),
                 **_launch_template(aws_powershell.user_data(spec, script)), **parts}
    resources.update({f"Node{i}": _node(i, ips, sorted(parts)) for i in range(cfn.MAX_TEMPLATE_NODES)})
    return {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": "mpicloud Windows MS-MPI cluster (generated by mpicloud.render.aws.cfn_windows; do not edit)",
        "Parameters": _parameters(spec), "Conditions": cfn._conditions(), "Resources": resources,
        "Outputs": _outputs(spec),
    }


def windows_template_json() -> str:
    """templates/cloudformation/windows-cluster.json (indent 1, as the Linux template, under the size limit)."""
    text = json.dumps(windows_template(), sort_keys=True, indent=1) + "\n"
    if len(text.encode()) > cfn.TEMPLATE_LIMIT:
        raise RenderError(f"the Windows template is {len(text)} bytes; CloudFormation reads at most "
                         f"{cfn.TEMPLATE_LIMIT}")
    return text
