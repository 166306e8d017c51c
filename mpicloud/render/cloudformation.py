"""CloudFormation template of a Linux Open MPI cluster (templates/cloudformation/cluster.json), Launch Stack ready;
an elastic spec gives the head node alone and a launch template its runner starts compute nodes from
(templates/cloudformation/cluster-elastic.json)."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from mpicloud.errors import RenderError
from mpicloud.render.aws import MAX_TEMPLATE_NODES as MAX_TEMPLATE_NODES  # re-exported: cfn_windows reads it here
from mpicloud.render.aws import (
    METADATA_OPTIONS,
    ROOT_DEVICE,
    SHARED_VOLUME_DEVICE,
    SSH_PORT,
    TAG_LAUNCH_TEMPLATE,
    TAG_SHARED_VOLUME,
    node_tags,
    secrets_key_policy,
    secrets_policy,
)
from mpicloud.render.aws.cloud_init import node_addresses, runner_parameters, user_data_base64
from mpicloud.render.cfn_bucket import BUCKET_CONDITIONS, BUCKET_PARAMETERS, prefix_policy_statements
from mpicloud.render.elastic_iam import node_actions_policy
from mpicloud.render.iam import assume_role_statement, ec2_trust_policy, kms_statement
from mpicloud.spec.load import spec_from_dict
from mpicloud.spec.model import ClusterSpec

_S3_HOST = re.compile(r"(^|\.)s3[.-]([a-z0-9-]+\.)?amazonaws\.com(\.cn)?$")
_CIDR_PATTERN = r"^(\d{1,3}\.){3}\d{1,3}/(\d|[12]\d|3[0-2])$"
#: the deployment's SSM path: stack name and the id of its own KMS key (a nonce per deployment)
PREFIX = "/mpicloud/${AWS::StackName}/${SecretsKey}"
#: node slots of the EFA variant (cluster-efa.json): instance network interfaces have no InterfaceType, so each node
#: gets an EFA interface and an Elastic IP of its own, and 3 resources per node must fit CloudFormation's 500
MAX_EFA_NODES = 128
#: Fn::Or takes at most 10 conditions: HasNode{i} lists NodeCount i+1 .. i+STRIDE and refers to HasNode{i+STRIDE}
STRIDE = 9


def template_spec() -> ClusterSpec:
    """The spec the checked-in template is generated from (what stays fixed; the rest are Parameters)."""
    return spec_from_dict({"name": "mpicloud", "cloud": "aws", "nodes": 2, "size": "c5n.large",
                           "region": "us-east-1", "admin": {"ssh_public_key": "ssh-ed25519 AAAA-key-pair-instead"},
                           # a /23: room for MAX_TEMPLATE_NODES fixed addresses from host .10
                           "aws": {"subnet_cidr": "10.0.0.0/23"}})


def elastic_of(spec: ClusterSpec) -> ClusterSpec:
    """A checked-in template's spec made elastic: the head node and 0 to 16 compute nodes."""
    return spec_from_dict({**spec.model_dump(mode="json", exclude_none=True), "nodes": {"min": 0, "max": 16}})


def elastic_template_spec() -> ClusterSpec:
    """The spec of the checked-in elastic template (elastic_of the Linux template's)."""
    return elastic_of(template_spec())


def _ref(name: str) -> dict[str, str]:
    return {"Ref": name}


def _sub(document: Any) -> Any:
    """`document` with every string holding a `${...}` placeholder wrapped in Fn::Sub."""
    if isinstance(document, dict):
        return {k: _sub(v) for k, v in document.items()}
    if isinstance(document, list):
        return [_sub(v) for v in document]
    return {"Fn::Sub": document} if isinstance(document, str) and "${" in document else document


def _parameters(spec: ClusterSpec, nodes: int | None = None) -> dict[str, Any]:
    options, nodes = spec.aws_options, nodes or MAX_TEMPLATE_NODES
    # a String: Conditions compare text, and moto (unlike CloudFormation) keeps a Number's Ref numeric
    count = {"NodeCount": {"Type": "String", "Default": str(spec.node_count),
                           "AllowedValues": [str(n) for n in range(1, nodes + 1)],
                           "Description": f"number of nodes (1 to {nodes}; node0 is the head node)"}}
    return {
        **({} if spec.elastic else count),
        "SlotsPerNode": {"Type": "Number", "Default": spec.slots_per_node, "MinValue": 1, "MaxValue": 1024,
                         "Description": "MPI slots per node (usually the core count)"},
        "InstanceType": {"Type": "String", "Default": spec.size, "Description": "EC2 instance type"},
        "KeyName": {"Type": "AWS::EC2::KeyPair::KeyName", "Description": "EC2 key pair for SSH logins"},
        "AllowedSshCidr": {"Type": "String", "AllowedPattern": _CIDR_PATTERN,
                           "Description": "the only network allowed to reach SSH, e.g. 203.0.113.0/24"},
        "LatestImageId": {"Type": "AWS::SSM::Parameter::Value<AWS::EC2::Image::Id>",
                          "Default": spec.ami_parameter,
                          "Description": "SSM parameter of the Debian 12 AMI, used while ImageId is empty. "
                                         "CloudFormation resolves it again on EVERY stack update: a newer image "
                                         "replaces every node unless ImageId pins the one in use"},
        "ImageId": {"Type": "String", "Default": "", "AllowedPattern": r"^$|^ami-[0-9a-f]{8,17}$",
                    "Description": "pinned AMI id; on updates pass the stack output ImageId here (keeps the nodes)"},
        "SharedVolumeGb": {"Type": "Number", "Default": options.shared_volume_gb, "MinValue": 1, "MaxValue": 16384,
                           "Description": "EBS volume of /shared on node0 (kept as a snapshot when the stack or "
                                          "node0 goes)"},
        "RootVolumeGb": {"Type": "Number", "Default": options.root_volume_gb, "MinValue": 8, "MaxValue": 16384,
                         "Description": "encrypted root volume size (GiB)"},
        "IdleShutdownMinutes": {"Type": "Number", "Default": 60, "MinValue": 0,
                                "Description": "stop every node after this long without jobs (0: never)"},
        "BucketName": {"Type": "String", "Default": "",
                       "Description": "your bucket for inputs and outputs (empty: no bucket access)"},
        **{k: v for k, v in BUCKET_PARAMETERS.items() if k != "BucketName"},
        "BucketRoleArn": {"Type": "String", "Default": "", "AllowedPattern": r"^$|^arn:[\w-]+:iam::\d{12}:role/\S+$",
                          "Description": "cross-account bucket: the role its owner created for this cluster "
                                         "(bucket-access.json RoleArn); the nodes may only assume it"},
    }


def _conditions(nodes: int | None = None) -> dict[str, Any]:
    """Node i exists when NodeCount > i: chained Or of Equals (CloudFormation compares only for equality); an
    elastic template (nodes 1) has the head alone."""
    nodes = nodes or MAX_TEMPLATE_NODES
    conditions: dict[str, Any] = {"HasBucket": {"Fn::Not": [{"Fn::Equals": [_ref("BucketName"), ""]}]},
                                  "HasBucketRole": {"Fn::Not": [{"Fn::Equals": [_ref("BucketRoleArn"), ""]}]},
                                  "HasPinnedImage": {"Fn::Not": [{"Fn::Equals": [_ref("ImageId"), ""]}]},
                                  **BUCKET_CONDITIONS}
    for i in range(nodes - 1, 0, -1):
        # node i exists when NodeCount is one of i+1 .. i+STRIDE, or when node i+STRIDE exists
        terms: list[dict[str, Any]] = [{"Fn::Equals": [_ref("NodeCount"), str(n)]}
                                       for n in range(i + 1, min(i + STRIDE, nodes) + 1)]
        if i + STRIDE < nodes:
            terms.append({"Condition": f"HasNode{i + STRIDE}"})
        conditions[f"HasNode{i}"] = terms[0] if len(terms) == 1 else {"Fn::Or": terms}
    return conditions


def _tags(extra: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    tags = {"mpicloud:cluster": {"Ref": "AWS::StackName"}, **(extra or {})}
    return [{"Key": k, "Value": v} for k, v in sorted(tags.items())]


def _network(spec: ClusterSpec) -> dict[str, Any]:
    options = spec.aws_options
    return {
        "Vpc": {"Type": "AWS::EC2::VPC", "Properties": {
            "CidrBlock": options.vpc_cidr, "EnableDnsHostnames": True, "EnableDnsSupport": True, "Tags": _tags()}},
        "Subnet": {"Type": "AWS::EC2::Subnet", "Properties": {
            "VpcId": _ref("Vpc"), "CidrBlock": options.subnet_cidr, "MapPublicIpOnLaunch": False,
            "AvailabilityZone": {"Fn::Select": [0, {"Fn::GetAZs": ""}]}, "Tags": _tags()}},
        "InternetGateway": {"Type": "AWS::EC2::InternetGateway", "Properties": {"Tags": _tags()}},
        "GatewayAttachment": {"Type": "AWS::EC2::VPCGatewayAttachment", "Properties": {
            "VpcId": _ref("Vpc"), "InternetGatewayId": _ref("InternetGateway")}},
        "RouteTable": {"Type": "AWS::EC2::RouteTable", "Properties": {"VpcId": _ref("Vpc"), "Tags": _tags()}},
        "DefaultRoute": {"Type": "AWS::EC2::Route", "DependsOn": "GatewayAttachment", "Properties": {
            "RouteTableId": _ref("RouteTable"), "DestinationCidrBlock": "0.0.0.0/0",
            "GatewayId": _ref("InternetGateway")}},
        "SubnetRoutes": {"Type": "AWS::EC2::SubnetRouteTableAssociation", "Properties": {
            "SubnetId": _ref("Subnet"), "RouteTableId": _ref("RouteTable")}},
    }


def _security() -> dict[str, Any]:
    return {
        "SecurityGroup": {"Type": "AWS::EC2::SecurityGroup", "Properties": {
            "GroupDescription": "mpicloud cluster: SSH from AllowedSshCidr, everything between members",
            "VpcId": _ref("Vpc"), "Tags": _tags(),
            "SecurityGroupEgress": [{"IpProtocol": "-1", "CidrIp": "0.0.0.0/0",
                                     "Description": "packages, SSM and the bucket"}]}},
        "ClusterEgress": {"Type": "AWS::EC2::SecurityGroupEgress", "Properties": {
            "GroupId": _ref("SecurityGroup"), "IpProtocol": "-1",
            "DestinationSecurityGroupId": _ref("SecurityGroup"), "Description": "MPI and EFA between members"}},
        "SshIngress": {"Type": "AWS::EC2::SecurityGroupIngress", "Properties": {
            "GroupId": _ref("SecurityGroup"), "IpProtocol": "tcp", "FromPort": SSH_PORT, "ToPort": SSH_PORT,
            "CidrIp": _ref("AllowedSshCidr"), "Description": "SSH from the allowed network only"}},
        "ClusterIngress": {"Type": "AWS::EC2::SecurityGroupIngress", "Properties": {
            "GroupId": _ref("SecurityGroup"), "IpProtocol": "-1",
            "SourceSecurityGroupId": _ref("SecurityGroup"), "Description": "MPI, SSH, SMB between members"}},
        "PlacementGroup": {"Type": "AWS::EC2::PlacementGroup", "Properties": {"Strategy": "cluster",
                                                                             "Tags": _tags()}},
    }


def _role_policy(condition: str, name: str, statement: dict[str, Any], roles: list[str]) -> dict[str, Any]:
    """A conditional policy on the node roles (a resource of its own, not an Fn::If entry in the role's Policies:
    moto turns an unselected list entry into None)."""
    return {"Type": "AWS::IAM::Policy", "Condition": condition, "Properties": {
        "PolicyName": name, "Roles": [_ref(r) for r in roles],
        "PolicyDocument": {"Version": "2012-10-17", "Statement": [statement]}}}


def _role() -> dict[str, Any]:
    """A role EC2 instances assume, with the bucket policy when the stack names a bucket."""
    return {"Type": "AWS::IAM::Role", "Properties": {
        "AssumeRolePolicyDocument": ec2_trust_policy(), "Tags": _tags(),
        "Policies": [{"Fn::If": ["HasBucket", {"PolicyName": "bucket-access",
                                               "PolicyDocument": {
                                                   "Version": "2012-10-17",
                                                   "Statement": prefix_policy_statements()}},
                                 {"Ref": "AWS::NoValue"}]}]}}


def _iam(elastic: bool = False) -> dict[str, Any]:
    """The node role, its policies, and the deployment's own KMS key for the SSM secrets (the head node creates
    them at first boot: CloudFormation cannot create SecureString parameters). The key goes with the stack
    (7-day deletion window), so the values the head stored become unreadable with it. An elastic cluster's head
    has a role of its own: the nodes' policies plus its node actions (`_head_iam`)."""
    roles = ["NodeRole", "HeadRole"] if elastic else ["NodeRole"]
    secrets = secrets_policy({"Fn::Sub": "arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:parameter"
                                         f"{PREFIX}/*"}, {"Fn::GetAtt": ["SecretsKey", "Arn"]})
    users = [{"Fn::GetAtt": [r, "Arn"]} for r in roles]
    key_policy = secrets_key_policy({"Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:root"},
                                    users[0] if len(users) == 1 else users)
    return {
        "SecretsKey": {"Type": "AWS::KMS::Key", "DeletionPolicy": "Delete", "UpdateReplacePolicy": "Delete",
                       "Properties": {
                           "Description": {"Fn::Sub": "mpicloud ${AWS::StackName}: cluster SSH key and Samba password"},
                           "EnableKeyRotation": True, "PendingWindowInDays": 7, "KeyPolicy": key_policy,
                           "Tags": _tags()}},
        "NodeSecretsPolicy": {"Type": "AWS::IAM::Policy", "Properties": {
            "PolicyName": "cluster-secrets", "Roles": [_ref(r) for r in roles], "PolicyDocument": secrets}},
        "NodeKmsPolicy": _role_policy("HasKmsKey", "bucket-kms", kms_statement(_ref("KmsKeyArn")), roles),
        "NodeBucketRolePolicy": _role_policy("HasBucketRole", "assume-bucket-role",
                                             assume_role_statement(_ref("BucketRoleArn")), roles),
        **{role: _role() for role in roles},
        **{role.replace("Role", "Profile"): {"Type": "AWS::IAM::InstanceProfile",
                                             "Properties": {"Roles": [_ref(role)]}} for role in roles},
        **(_head_iam() if elastic else {}),
    }


def _head_iam() -> dict[str, Any]:
    """The elastic head's node actions (render.elastic_iam): launch only from ComputeLaunchTemplate with the
    cluster tag, start/stop/terminate only the cluster's instances, pass only the node role to EC2."""
    policy = node_actions_policy("${AWS::StackName}", "${AWS::Region}", "${AWS::AccountId}",
                                 "${ComputeLaunchTemplate}", "${NodeRole.Arn}", "${AWS::Partition}")
    return {"HeadNodeActionsPolicy": {"Type": "AWS::IAM::Policy", "Properties": {
        "PolicyName": "node-actions", "Roles": [_ref("HeadRole")], "PolicyDocument": _sub(policy)}}}


def _launch_template(user_data: Any, name: str = "NodeLaunchTemplate", more: dict[str, Any] | None = None,
                     root_device: str = ROOT_DEVICE) -> dict[str, Any]:
    """What AWS::EC2::Instance cannot say itself (IMDSv2 above all), and the user data every worker shares (node0
    has its own); image, type, key and role are on the nodes (`more`: in the template, for compute nodes). An
    elastic Linux head's template has no user data: a new worker user data must not make a new version of it (its
    instance would be replaced). `root_device`: the AMI's (Windows: /dev/sda1)."""
    data = {
        **({"UserData": user_data} if user_data else {}),
        "MetadataOptions": {"".join(w.capitalize() for w in k.split("_")): v for k, v in METADATA_OPTIONS.items()},
        "BlockDeviceMappings": [{"DeviceName": root_device, "Ebs": {
            "Encrypted": True, "VolumeSize": _ref("RootVolumeGb"), "VolumeType": "gp3",
            "DeleteOnTermination": True}}],
        "Placement": {"GroupName": _ref("PlacementGroup")}, "EbsOptimized": True, "Monitoring": {"Enabled": True},
        "InstanceInitiatedShutdownBehavior": "stop",
        "TagSpecifications": [{"ResourceType": "volume", "Tags": _tags()}],
        **(more or {}),
    }
    return {name: {"Type": "AWS::EC2::LaunchTemplate", "Properties": {
        "LaunchTemplateData": data,
        "TagSpecifications": [{"ResourceType": "launch-template", "Tags": _tags()}]}}}


def compute_launch_template(user_data: Any, node_tags: dict[str, Any], efa: bool = False,
                            root_device: str = ROOT_DEVICE, key: bool = True) -> dict[str, Any]:
    """The elastic cluster's compute nodes, launched by the head (provision/runner/ec2_nodes.py): everything an
    instance needs, the node role's profile, and the tags a node reads at boot (`node_tags`) plus the cluster's.
    The head adds the node's name tag and its fixed private address at launch. `key`: the EC2 key pair (Linux;
    Windows nodes take the administrator password instead)."""
    interface: dict[str, Any] = {"DeviceIndex": 0, "SubnetId": _ref("Subnet"), "Groups": [_ref("SecurityGroup")],
                                 "AssociatePublicIpAddress": True, "DeleteOnTermination": True,
                                 **({"InterfaceType": "efa"} if efa else {})}
    tags = _tags({"Name": {"Fn::Sub": "${AWS::StackName}-compute"}, **node_tags})
    more = {"ImageId": IMAGE, "InstanceType": _ref("InstanceType"), **({"KeyName": _ref("KeyName")} if key else {}),
            "IamInstanceProfile": {"Arn": {"Fn::GetAtt": ["NodeProfile", "Arn"]}}, "NetworkInterfaces": [interface],
            "TagSpecifications": [{"ResourceType": "instance", "Tags": tags},
                                  {"ResourceType": "volume", "Tags": _tags()}]}
    return _launch_template(user_data, "ComputeLaunchTemplate", more, root_device)


def node_tags_of(spec: ClusterSpec) -> dict[str, Any]:
    """The tags a node reads at boot: the node count is a parameter, or an elastic cluster's head plus max."""
    count = str(spec.node_count) if spec.elastic else _ref("NodeCount")
    return node_tags(count, _ref("SlotsPerNode"), {"Fn::Sub": PREFIX}, _ref("IdleShutdownMinutes"),
                     _ref("SecretsKey"))


def _runner_parts() -> dict[str, Any]:
    """The runner's files as SSM String parameters the head node joins at boot (fetch-runner.sh)."""
    parts = runner_parameters(PREFIX)
    return {f"RunnerPart{i}": {"Type": "AWS::SSM::Parameter", "Properties": {
        "Name": {"Fn::Sub": name}, "Type": "String", "Value": value, "Tier": "Standard",
        "Description": "mpicloud runner (gzip+base64 piece)", "Tags": {"mpicloud:cluster": {"Ref": "AWS::StackName"}}}}
        for i, (name, value) in enumerate(sorted(parts.items()))}


IMAGE = {"Fn::If": ["HasPinnedImage", _ref("ImageId"), _ref("LatestImageId")]}


def _efa(index: int, ip: str) -> dict[str, Any]:
    """Node `index`'s EFA interface (its fixed address) and its Elastic IP (a pre-made interface gets no public
    address of its own), switched on with the node."""
    condition = {"Condition": f"HasNode{index}"} if index else {}
    return {
        f"Node{index}Efa": {"Type": "AWS::EC2::NetworkInterface", **condition, "Properties": {
            "SubnetId": _ref("Subnet"), "PrivateIpAddress": ip, "GroupSet": [_ref("SecurityGroup")],
            # EFA needs the group's all-traffic rules to itself (ClusterIngress/ClusterEgress)
            "InterfaceType": "efa", "Description": f"EFA of node{index}", "Tags": _tags()}},
        f"Node{index}Ip": {"Type": "AWS::EC2::EIP", **condition, "DependsOn": "GatewayAttachment", "Properties": {
            "Domain": "vpc", "InstanceId": _ref(f"Node{index}"), "Tags": _tags()}},
    }


def _node(spec: ClusterSpec, index: int, ips: list[str], after: list[str], efa: bool = False) -> dict[str, Any]:
    tags = node_tags_of(spec)
    elastic = spec.elastic is not None
    props: dict[str, Any] = {
        "LaunchTemplate": {"LaunchTemplateId": _ref("NodeLaunchTemplate"),
                           "Version": {"Fn::GetAtt": ["NodeLaunchTemplate", "LatestVersionNumber"]}},
        "ImageId": IMAGE, "InstanceType": _ref("InstanceType"), "KeyName": _ref("KeyName"),
        "IamInstanceProfile": _ref("HeadProfile" if elastic else "NodeProfile"),
        "NetworkInterfaces": [{"DeviceIndex": "0", "NetworkInterfaceId": _ref(f"Node{index}Efa")} if efa else {
            "DeviceIndex": "0", "SubnetId": _ref("Subnet"), "PrivateIpAddress": ips[index],
            "GroupSet": [_ref("SecurityGroup")], "AssociatePublicIpAddress": True, "DeleteOnTermination": True}]}
    if index == 0:
        props["UserData"] = user_data_base64(spec, 0, ips)
        tags[TAG_SHARED_VOLUME] = _ref("SharedVolume")
        if elastic:
            tags[TAG_LAUNCH_TEMPLATE] = _ref("ComputeLaunchTemplate")
    props["Tags"] = _tags({"Name": {"Fn::Sub": f"${{AWS::StackName}}-node{index}"}, **tags})
    node: dict[str, Any] = {"Type": "AWS::EC2::Instance", "DependsOn": ["DefaultRoute", "NodeSecretsPolicy", *after],
                            "Properties": props}
    if index:
        node["Condition"] = f"HasNode{index}"
    return node


def _shared_volume() -> dict[str, Any]:
    """/shared on its own encrypted volume, snapshotted when the stack (or a replacement) removes it."""
    return {
        "SharedVolume": {"Type": "AWS::EC2::Volume", "DeletionPolicy": "Snapshot", "UpdateReplacePolicy": "Snapshot",
                         "Properties": {"AvailabilityZone": {"Fn::GetAtt": ["Subnet", "AvailabilityZone"]},
                                        "Size": _ref("SharedVolumeGb"), "VolumeType": "gp3", "Encrypted": True,
                                        "Tags": _tags()}},
        "SharedVolumeAttachment": {"Type": "AWS::EC2::VolumeAttachment", "Properties": {
            "Device": SHARED_VOLUME_DEVICE, "InstanceId": _ref("Node0"), "VolumeId": _ref("SharedVolume")}},
    }


def elastic_outputs(spec: ClusterSpec) -> dict[str, Any]:
    """An elastic template's own output: the compute launch template's id."""
    return {"ComputeLaunchTemplateId": {"Description": "the launch template the head starts compute nodes from",
                                        "Value": _ref("ComputeLaunchTemplate")}} if spec.elastic else {}


def _outputs(spec: ClusterSpec, efa: bool = False) -> dict[str, Any]:
    user = spec.admin.username
    ip = "${Node0Ip}" if efa else "${Node0.PublicIp}"  # EFA: the Elastic IP (Ref is its address)
    return {
        **elastic_outputs(spec),
        "HeadPublicIp": {"Description": "public address of node0 (the head node)",
                         "Value": _ref("Node0Ip") if efa else {"Fn::GetAtt": ["Node0", "PublicIp"]}},
        "SshCommand": {"Description": "log in to the head node", "Value": {"Fn::Sub": f"ssh {user}@{ip}"}},
        "AttachCommand": {"Description": "register the cluster with mpicloud (host key pinned on first use)",
                          "Value": {"Fn::Sub": spec.target.attach_command("NAME", ip, user, "${SlotsPerNode}")}},
        "HeadInstanceId": {"Description": "host key fingerprints: aws ec2 get-console-output --instance-id",
                           "Value": _ref("Node0")},
        "SecurityGroupId": {"Value": _ref("SecurityGroup")},
        "ImageId": {"Description": "the AMI of the nodes: pass it as the ImageId parameter on every update",
                    "Value": IMAGE},
        "SsmPrefix": {"Description": "where the head node keeps this deployment's secrets",
                      "Value": {"Fn::Sub": PREFIX}},
    }


def cluster_template(spec: ClusterSpec | None = None, efa: bool = False) -> dict[str, Any]:
    """The cluster template as a dict (the same cloud-init, ports and policies as the Pulumi program); `efa`: the
    variant whose nodes (at most MAX_EFA_NODES) are attached through EFA interfaces (cluster-efa.json)."""
    spec = spec or template_spec()
    elastic = spec.elastic is not None
    nodes = 1 if elastic else MAX_EFA_NODES if efa else MAX_TEMPLATE_NODES
    if spec.node_count > (MAX_TEMPLATE_NODES if elastic else nodes):
        raise RenderError(f"the CloudFormation template has at most {nodes} nodes; use Pulumi for {spec.node_count}")
    ips = node_addresses(spec.aws_options.subnet_cidr, spec.node_count if elastic else MAX_TEMPLATE_NODES)
    parts = _runner_parts()
    worker = user_data_base64(spec, None, ips)
    resources = {**_network(spec), **_security(), **_iam(elastic), **_launch_template(None if elastic else worker),
                 **(compute_launch_template(worker, node_tags_of(spec), efa) if elastic else {}), **parts,
                 **_shared_volume()}
    for i in range(nodes):
        resources.update({f"Node{i}": _node(spec, i, ips, sorted(parts) if i == 0 else [], efa),
                          **(_efa(i, ips[i]) if efa else {})})
    kind = "Linux Open MPI cluster on EFA" if efa else "Linux Open MPI cluster"
    kind = f"elastic {kind} (head node; compute nodes started by its runner)" if elastic else kind
    return {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Description": f"mpicloud {kind} (generated by mpicloud.render.cloudformation; do not edit)",
        "Parameters": _parameters(spec, nodes), "Conditions": _conditions(nodes), "Resources": resources,
        "Outputs": _outputs(spec, efa),
    }


#: CloudFormation's limit for a template read from S3 (bytes)
TEMPLATE_LIMIT = 1_000_000


def cluster_template_json(spec: ClusterSpec | None = None, efa: bool = False) -> str:
    """Deterministic JSON text of the cluster template (indent 1: 256 nodes must stay under TEMPLATE_LIMIT)."""
    text = json.dumps(cluster_template(spec, efa), sort_keys=True, indent=1) + "\n"
    if len(text.encode()) > TEMPLATE_LIMIT:
        raise RenderError(f"the CloudFormation template is {len(text)} bytes; CloudFormation reads at most "
                          f"{TEMPLATE_LIMIT} from S3")
    return text


def elastic_template_json() -> str:
    """templates/cloudformation/cluster-elastic.json: the head node and a launch template for 0 to 16 compute
    nodes (elastic_template_spec)."""
    return cluster_template_json(elastic_template_spec())


def efa_template_json() -> str:
    """templates/cloudformation/cluster-efa.json: the template for EFA instance types (c5n.18xlarge by default)."""
    return cluster_template_json(spec_from_dict({**template_spec().model_dump(mode="json", exclude_none=True),
                                                 "size": "c5n.18xlarge", "aws": {"subnet_cidr": "10.0.0.0/23",
                                                                                 "efa": True}}), efa=True)


def launch_stack_url(template_url: str, region: str, stack_name: str = "mpi-cluster",
                     parameters: dict[str, str] | None = None) -> str:
    """The console quick-create link ("Launch Stack"); the template must be hosted in S3 (https)."""
    host = urlsplit(template_url).hostname or ""
    if not template_url.startswith("https://") or not _S3_HOST.search(host):
        raise RenderError(f"{template_url!r}: CloudFormation only takes templates from an https:// S3 URL")
    if not re.match(r"^[A-Za-z][A-Za-z0-9-]{0,127}$", stack_name):
        raise RenderError(f"stack name {stack_name!r}: letters, digits and '-', starting with a letter")
    query = {"templateURL": template_url, "stackName": stack_name,
             **{f"param_{k}": v for k, v in sorted((parameters or {}).items())}}
    return (f"https://console.aws.amazon.com/cloudformation/home?region={quote(region)}"
            f"#/stacks/quickcreate?{urlencode(query, quote_via=quote, safe='')}")
