"""VPC, public subnet and the cluster security group (SSH only from allowed_cidrs, all traffic among members)."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from mpicloud.render.aws import RDP_PORT, SSH_PORT
from mpicloud.spec import ClusterSpec


@dataclass
class NetworkArgs:
    """The spec (CIDRs, existing VPC/subnet, allowed sources) and the tags for every resource."""

    spec: ClusterSpec
    tags: dict[str, str]


class Network(pulumi.ComponentResource):
    """A new VPC + public subnet + internet route, or the spec's existing ones; and the security group."""

    vpc_id: pulumi.Output[str]
    subnet_id: pulumi.Output[str]
    availability_zone: pulumi.Output[str]
    security_group_id: pulumi.Output[str]

    def __init__(self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("mpicloud:aws:Network", name, None, opts)
        options = args.spec.aws_options
        if not args.spec.access.allowed_cidrs:
            raise pulumi.RunError("access.allowed_cidrs is empty: no network could reach SSH on the nodes")
        if options.subnet_id and options.vpc_id:
            self.vpc_id, self.subnet_id = pulumi.Output.from_input(options.vpc_id), pulumi.Output.from_input(
                options.subnet_id)
            self.availability_zone = aws.ec2.get_subnet_output(
                id=options.subnet_id, opts=pulumi.InvokeOptions(parent=self)).availability_zone
        elif options.subnet_id or options.vpc_id:
            raise pulumi.RunError("aws.vpc_id and aws.subnet_id go together: give both or neither")
        else:
            self._create_vpc(name, args)
        self._security_group(name, args)
        self.register_outputs({"vpc_id": self.vpc_id, "subnet_id": self.subnet_id,
                               "security_group_id": self.security_group_id})

    def _create_vpc(self, name: str, args: NetworkArgs) -> None:
        options, child = args.spec.aws_options, pulumi.ResourceOptions(parent=self)
        vpc = aws.ec2.Vpc(f"{name}-vpc", cidr_block=options.vpc_cidr, enable_dns_hostnames=True,
                          enable_dns_support=True, tags=args.tags, opts=child)
        zone = aws.get_availability_zones_output(opts=pulumi.InvokeOptions(parent=self)).names[0]
        subnet = aws.ec2.Subnet(f"{name}-subnet", vpc_id=vpc.id, cidr_block=options.subnet_cidr,
                                availability_zone=zone, tags=args.tags, opts=child)
        gateway = aws.ec2.InternetGateway(f"{name}-igw", vpc_id=vpc.id, tags=args.tags, opts=child)
        table = aws.ec2.RouteTable(f"{name}-routes", vpc_id=vpc.id, tags=args.tags, routes=[
            {"cidr_block": "0.0.0.0/0", "gateway_id": gateway.id}], opts=child)
        aws.ec2.RouteTableAssociation(f"{name}-subnet-routes", subnet_id=subnet.id, route_table_id=table.id,
                                      opts=child)
        self.vpc_id, self.subnet_id, self.availability_zone = vpc.id, subnet.id, subnet.availability_zone

    def _security_group(self, name: str, args: NetworkArgs) -> None:
        child = pulumi.ResourceOptions(parent=self)
        group = aws.ec2.SecurityGroup(f"{name}-sg", vpc_id=self.vpc_id, tags=args.tags, opts=child,
                                      description="mpicloud cluster: SSH from allowed_cidrs, all among members")
        ports = {"ssh": SSH_PORT, **({"rdp": RDP_PORT} if args.spec.os == "windows" else {})}
        for i, cidr in enumerate(args.spec.access.allowed_cidrs):
            for service, port in ports.items():
                aws.vpc.SecurityGroupIngressRule(
                    f"{name}-{service}-{i}", security_group_id=group.id, ip_protocol="tcp", from_port=port,
                    to_port=port, description=f"{service.upper()} from an allowed network", tags=args.tags,
                    opts=child, **({"cidr_ipv6": cidr} if ":" in cidr else {"cidr_ipv4": cidr}))
        aws.vpc.SecurityGroupIngressRule(f"{name}-members", security_group_id=group.id, ip_protocol="-1",
                                         referenced_security_group_id=group.id, tags=args.tags, opts=child,
                                         description="MPI, SSH, SMB/NFS between members")
        # EFA needs all traffic out to the group itself too (the 0.0.0.0/0 rule does not count for EFA)
        aws.vpc.SecurityGroupEgressRule(f"{name}-members-out", security_group_id=group.id, ip_protocol="-1",
                                        referenced_security_group_id=group.id, tags=args.tags, opts=child,
                                        description="MPI and EFA between members")
        aws.vpc.SecurityGroupEgressRule(f"{name}-egress", security_group_id=group.id, ip_protocol="-1",
                                        cidr_ipv4="0.0.0.0/0", description="packages, SSM and the bucket",
                                        tags=args.tags, opts=child)
        self.security_group_id = group.id
