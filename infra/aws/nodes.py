"""The nodes: cluster placement group, key pair, N instances (IMDSv2, encrypted root, optional EFA)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws

from mpicloud.render.aws_common import METADATA_OPTIONS, literal_node_tags, ssm_prefix
from mpicloud.render.linux import node_addresses, runner_parameters, user_data_base64
from mpicloud.spec import ClusterSpec


@dataclass
class NodesArgs:
    """Where the nodes go (subnet, security group, instance profile) and the tags for every resource."""

    spec: ClusterSpec
    subnet_id: pulumi.Input[str]
    security_group_id: pulumi.Input[str]
    profile_name: pulumi.Input[str]
    tags: dict[str, str]


class Nodes(pulumi.ComponentResource):
    """Node 0 is the head node (Samba/NFS server, runner); nodes have fixed private IPs from the subnet CIDR."""

    instances: list[aws.ec2.Instance]
    addresses: list[aws.ec2.Eip]  # EFA nodes only: a pre-made interface gets no automatic public address
    runner_parts: list[aws.ssm.Parameter]  # the runner, too big for user data; the head node joins them
    public_ips: pulumi.Output[list[str]]

    def __init__(self, name: str, args: NodesArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("mpicloud:aws:Nodes", name, None, opts)
        spec, child = args.spec, pulumi.ResourceOptions(parent=self)
        options = spec.aws_options
        group = aws.ec2.PlacementGroup(f"{name}-pg", strategy="cluster", tags=args.tags, opts=child) \
            if options.placement_group else None
        key_name: pulumi.Input[str] | None = options.key_name
        if key_name is None:
            key_name = aws.ec2.KeyPair(f"{name}-key", public_key=spec.admin.ssh_public_key, tags=args.tags,
                                       opts=child).key_name
        ami = aws.ssm.get_parameter_output(name=options.ami_ssm_parameter).value
        ips = node_addresses(options.subnet_cidr, spec.nodes)
        common = {
            "ami": ami, "instance_type": spec.size, "key_name": key_name, "iam_instance_profile": args.profile_name,
            "placement_group": group.name if group else None, "metadata_options": METADATA_OPTIONS,
            "root_block_device": {"encrypted": True, "volume_size": options.root_volume_gb, "volume_type": "gp3"},
            "instance_initiated_shutdown_behavior": "stop", "monitoring": True, "ebs_optimized": True,
        }
        self.addresses = []
        self.runner_parts = [
            aws.ssm.Parameter(f"{name}-runner-{i}", name=key, type="String", value=value, tier="Standard",
                              description="mpicloud runner (gzip+base64 piece)", tags=args.tags, opts=child)
            for i, (key, value) in enumerate(sorted(runner_parameters(ssm_prefix(spec.name)).items()))]
        self.instances = [self._instance(f"{name}-node{i}", i, ips, common, args) for i in range(spec.nodes)]
        self.public_ips = pulumi.Output.all(*[n.public_ip for n in self.instances])
        self.register_outputs({"public_ips": self.public_ips})

    def _instance(self, name: str, index: int, ips: list[str], common: dict[str, Any],
                  args: NodesArgs) -> aws.ec2.Instance:
        child = pulumi.ResourceOptions(parent=self)
        after = pulumi.ResourceOptions(parent=self, depends_on=list(self.runner_parts) if index == 0 else [])
        tags = {**args.tags, **literal_node_tags(args.spec), "Name": name}
        network: dict[str, Any] = {"subnet_id": args.subnet_id, "private_ip": ips[index],
                                   "vpc_security_group_ids": [args.security_group_id],
                                   "associate_public_ip_address": True}
        eni = None
        if args.spec.aws_options.efa:
            eni = aws.ec2.NetworkInterface(f"{name}-efa", subnet_id=args.subnet_id, interface_type="efa",
                                           private_ips=[ips[index]], security_groups=[args.security_group_id],
                                           tags=args.tags, opts=child)
            network = {"network_interfaces": [{"network_interface_id": eni.id, "device_index": 0}]}
        instance = aws.ec2.Instance(name, user_data_base64=user_data_base64(args.spec, index, ips), tags=tags,
                                    volume_tags=args.tags, opts=after, **common, **network)
        if eni is not None:
            self.addresses.append(aws.ec2.Eip(f"{name}-ip", domain="vpc", network_interface=eni.id, tags=args.tags,
                                              opts=child))
        return instance
