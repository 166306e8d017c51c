"""The nodes: cluster placement group, key pair, N instances (IMDSv2, encrypted root, optional EFA), /shared volume
(Linux); Windows nodes boot the PowerShell bootstrap from SSM through EC2Launch v2 instead. An elastic cluster gets
the head alone and a launch template its runner starts compute nodes from (provision/runner/ec2_nodes.py)."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws

from mpicloud.render.aws import (
    METADATA_OPTIONS,
    ROOT_DEVICE,
    SHARED_VOLUME_DEVICE,
    TAG_INDEX,
    TAG_LAUNCH_TEMPLATE,
    TAG_SECRET,
    TAG_SHARED_VOLUME,
    idle_tag,
    node_tags,
    powershell,
)
from mpicloud.render.aws.cfn_windows import ROOT_DEVICE as WINDOWS_ROOT_DEVICE
from mpicloud.render.aws.cloud_init import node_addresses, runner_parameters, user_data_base64
from mpicloud.render.windows_bootstrap import bootstrap_ps1
from mpicloud.spec import ClusterSpec

#: instance inputs a later `pulumi up` leaves alone: the AMI is resolved once (a newer "latest" image must not
#: replace every node), and user data only runs at first boot anyway (changing it would stop and start the node)
INSTANCE_IGNORED = ["ami", "userData", "userDataBase64"]


@dataclass
class NodesArgs:
    """Where the nodes go (subnet and its zone, security group, instance profile), the deployment's SSM path and
    KMS key, and the tags for every resource."""

    spec: ClusterSpec
    subnet_id: pulumi.Input[str]
    availability_zone: pulumi.Input[str]
    security_group_id: pulumi.Input[str]
    profile_name: pulumi.Input[str]
    #: the head's instance profile (an elastic head's own role; else profile_name)
    head_profile_name: pulumi.Input[str]
    ssm_prefix: pulumi.Output[str]
    key_id: pulumi.Input[str]
    tags: dict[str, str]
    #: Windows: the ARN of the administrator password's secret (an instance tag the bootstrap reads)
    admin_secret_arn: pulumi.Input[str] | None = None


class Nodes(pulumi.ComponentResource):
    """Node 0 is the head node (Samba/NFS server, runner); nodes have fixed private IPs from the subnet CIDR."""

    instances: list[aws.ec2.Instance]
    addresses: list[aws.ec2.Eip]  # EFA nodes only: a pre-made interface gets no automatic public address
    runner_parts: list[aws.ssm.Parameter]  # the runner, too big for user data; the head node joins them
    shared_volume: aws.ebs.Volume | None  # the head node's shared directory, a volume of its own
    shared_attachment: aws.ec2.VolumeAttachment | None
    launch_template: aws.ec2.LaunchTemplate | None  # elastic: the compute nodes' template
    public_ips: pulumi.Output[list[str]]
    ami: pulumi.Output[str]

    def __init__(self, name: str, args: NodesArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("mpicloud:aws:Nodes", name, None, opts)
        spec, child = args.spec, pulumi.ResourceOptions(parent=self)
        options = spec.aws_options
        group = aws.ec2.PlacementGroup(f"{name}-pg", strategy="cluster", tags=args.tags, opts=child) \
            if options.placement_group else None
        windows = spec.os == "windows"
        key_name: pulumi.Input[str] | None = options.key_name
        if key_name is None and not windows:
            key_name = aws.ec2.KeyPair(f"{name}-key", public_key=spec.admin.ssh_public_key, tags=args.tags,
                                       opts=child).key_name
        self.ami = pulumi.Output.from_input(options.ami) if options.ami else aws.ssm.get_parameter_output(
            name=spec.ami_parameter, opts=pulumi.InvokeOptions(parent=self)).value
        ips = node_addresses(options.subnet_cidr, spec.node_count)
        # Windows: the whole bootstrap (runner inside) in pieces, joined by the EC2Launch v2 task
        self.script = bootstrap_ps1(spec) if windows else ""
        self.launch_template = None if spec.elastic is None else self._compute_template(
            f"{name}-compute", args, ips, key_name, group)
        common = {
            "ami": self.ami, "instance_type": spec.size, "key_name": key_name,
            "placement_group": group.name if group else None, "metadata_options": METADATA_OPTIONS,
            "root_block_device": {"encrypted": True, "volume_size": options.root_volume_gb, "volume_type": "gp3",
                                  "tags": args.tags},
            "instance_initiated_shutdown_behavior": "stop", "monitoring": True, "ebs_optimized": True,
        }
        self.addresses = []
        pieces = powershell.script_parameters("", self.script) if windows else runner_parameters("")
        self.runner_parts = [
            aws.ssm.Parameter(f"{name}-runner-{i}", name=args.ssm_prefix.apply(lambda p, k=key: p + k), type="String",
                              value=value, tier="Standard", description="mpicloud runner (gzip+base64 piece)",
                              tags=args.tags, opts=child)
            for i, (key, value) in enumerate(sorted(pieces.items()))]
        self.shared_volume = None
        if spec.shared_storage.kind != "local" and not windows:
            # retain_on_delete: even `pulumi destroy` keeps the results; docs/aws-linux.md says how to delete it
            self.shared_volume = aws.ebs.Volume(
                f"{name}-shared", availability_zone=args.availability_zone, size=options.shared_volume_gb,
                type="gp3", encrypted=True, tags={**args.tags, "Name": f"{spec.name}-shared"},
                opts=pulumi.ResourceOptions(parent=self, retain_on_delete=True))
        started = 1 if spec.elastic else spec.node_count
        self.instances = [self._instance(f"{name}-node{i}", i, ips, common, args) for i in range(started)]
        self.shared_attachment = None if self.shared_volume is None else aws.ec2.VolumeAttachment(
            f"{name}-shared-attach", device_name=SHARED_VOLUME_DEVICE, volume_id=self.shared_volume.id,
            instance_id=self.instances[0].id, stop_instance_before_detaching=True, opts=child)
        # EFA nodes are reached through their Elastic IPs (a pre-made interface has no automatic public address)
        self.public_ips = pulumi.Output.all(*[a.public_ip for a in self.addresses]) if self.addresses else \
            pulumi.Output.all(*[n.public_ip for n in self.instances])
        self.register_outputs({"public_ips": self.public_ips, "ami": self.ami})

    @staticmethod
    def _node_tags(args: NodesArgs) -> dict[str, pulumi.Input[str]]:
        """What every node reads at boot (Windows: also the password's secret; its index comes per node)."""
        spec = args.spec
        secret = {} if args.admin_secret_arn is None else {TAG_SECRET: args.admin_secret_arn}
        return {**args.tags, **node_tags(str(spec.node_count), str(spec.slots_per_node), args.ssm_prefix,
                                         idle_tag(spec), args.key_id), **secret}

    def _compute_template(self, name: str, args: NodesArgs, ips: list[str], key_name: pulumi.Input[str] | None,
                          group: aws.ec2.PlacementGroup | None) -> aws.ec2.LaunchTemplate:
        """The elastic cluster's compute nodes: everything an instance needs, the nodes' profile, the worker user
        data (no secret) and the tags a node reads at boot; the head adds a node's name tag and fixed address at
        launch. A change makes a new default version: running nodes stay, later launches use it. Windows: the
        EC2Launch v2 user data every node shares (the head tags a node's index at launch)."""
        spec, options = args.spec, args.spec.aws_options
        windows = spec.os == "windows"
        user_data = base64.b64encode(powershell.user_data(spec, self.script).encode()).decode() if windows else \
            user_data_base64(spec, None, ips)
        interface = {"device_index": 0, "subnet_id": args.subnet_id, "security_groups": [args.security_group_id],
                     "associate_public_ip_address": "true", "delete_on_termination": "true",
                     **({"interface_type": "efa"} if options.efa else {})}
        return aws.ec2.LaunchTemplate(
            name, image_id=self.ami, instance_type=spec.size, key_name=key_name,
            iam_instance_profile={"name": args.profile_name}, network_interfaces=[interface],
            placement={"group_name": group.name} if group else None, metadata_options=METADATA_OPTIONS,
            user_data=user_data, update_default_version=True,
            block_device_mappings=[{"device_name": WINDOWS_ROOT_DEVICE if windows else ROOT_DEVICE, "ebs": {
                "encrypted": "true", "volume_size": options.root_volume_gb, "volume_type": "gp3",
                "delete_on_termination": "true"}}],
            ebs_optimized="true", monitoring={"enabled": True}, instance_initiated_shutdown_behavior="stop",
            tag_specifications=[{"resource_type": "instance", "tags": {**self._node_tags(args), "Name": name}},
                                {"resource_type": "volume", "tags": args.tags}],
            tags=args.tags, opts=pulumi.ResourceOptions(parent=self))

    def _instance(self, name: str, index: int, ips: list[str], common: dict[str, Any],
                  args: NodesArgs) -> aws.ec2.Instance:
        child = pulumi.ResourceOptions(parent=self)
        after = pulumi.ResourceOptions(parent=self, depends_on=list(self.runner_parts) if index == 0 else [],
                                       ignore_changes=INSTANCE_IGNORED)
        spec = args.spec
        tags: dict[str, pulumi.Input[str]] = {**self._node_tags(args), "Name": name}
        if index == 0 and self.shared_volume is not None:
            tags[TAG_SHARED_VOLUME] = self.shared_volume.id
        if index == 0 and self.launch_template is not None:
            tags[TAG_LAUNCH_TEMPLATE] = self.launch_template.id
        if args.admin_secret_arn is not None:
            tags[TAG_INDEX] = str(index)
        network: dict[str, Any] = {"subnet_id": args.subnet_id, "private_ip": ips[index],
                                   "vpc_security_group_ids": [args.security_group_id],
                                   "associate_public_ip_address": True}
        eni = None
        if spec.aws_options.efa:
            eni = aws.ec2.NetworkInterface(f"{name}-efa", subnet_id=args.subnet_id, interface_type="efa",
                                           private_ips=[ips[index]], security_groups=[args.security_group_id],
                                           tags=args.tags, opts=child)
            network = {"network_interfaces": [{"network_interface_id": eni.id, "device_index": 0}]}
        boot = {"user_data": powershell.user_data(spec, self.script)} if spec.os == "windows" else \
            {"user_data_base64": user_data_base64(spec, index, ips)}
        profile = args.head_profile_name if index == 0 else args.profile_name
        instance = aws.ec2.Instance(name, tags=tags, opts=after, iam_instance_profile=profile, **boot, **common,
                                    **network)
        if eni is not None:
            self.addresses.append(aws.ec2.Eip(f"{name}-ip", domain="vpc", network_interface=eni.id, tags=args.tags,
                                              opts=child))
        return instance
