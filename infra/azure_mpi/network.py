"""Network of the cluster: NSG (SSH, and RDP on Windows, from the allowed networks only), VNet and subnet, optional
NAT gateway."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
from pulumi_azure_native import network

from mpicloud.render import azure
from mpicloud.spec import ClusterSpec


@dataclass
class NetworkArgs:
    """Inputs of the cluster network."""

    spec: ClusterSpec
    resource_group_name: pulumi.Input[str]
    location: pulumi.Input[str]


def security_rules(spec: ClusterSpec) -> list[network.SecurityRuleArgs]:
    """The inbound allow rules (from render/azure/__init__.py, the same rules the ARM template emits)."""
    return [network.SecurityRuleArgs(
        name=rule.name, description=rule.description, priority=rule.priority, direction="Inbound", access="Allow",
        protocol="Tcp", source_address_prefixes=azure.allowed_sources(spec), source_port_range="*",
        destination_address_prefix="*", destination_port_range=str(rule.port)) for rule in azure.inbound(spec)]


def public_ip(name: str, args: NetworkArgs, parent: pulumi.Resource) -> network.PublicIPAddress:
    """A Standard static public IP (Basic SKU is retired)."""
    return network.PublicIPAddress(
        name, public_ip_address_name=name, resource_group_name=args.resource_group_name, location=args.location,
        sku=network.PublicIPAddressSkuArgs(name="Standard", tier="Regional"), public_ip_allocation_method="Static",
        public_ip_address_version="IPv4", tags=azure.tags(args.spec), opts=pulumi.ResourceOptions(parent=parent))


class Network(pulumi.ComponentResource):
    """NSG, VNet with the cluster subnet, and (head_nat) a NAT gateway for nodes without a public IP."""

    def __init__(self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("mpicloud:azure:Network", name, None, opts)
        spec, names, tags = args.spec, azure.resource_names(args.spec), azure.tags(args.spec)
        child = pulumi.ResourceOptions(parent=self)
        self.nsg = network.NetworkSecurityGroup(
            names["nsg"], network_security_group_name=names["nsg"], resource_group_name=args.resource_group_name,
            location=args.location, security_rules=security_rules(spec), tags=tags, opts=child)
        self.nat: network.NatGateway | None = None
        if spec.azure_options.public_ip == "head_nat":
            nat_ip = public_ip(names["nat_ip"], args, self)
            self.nat = network.NatGateway(
                names["nat"], nat_gateway_name=names["nat"], resource_group_name=args.resource_group_name,
                location=args.location, sku=network.NatGatewaySkuArgs(name="Standard"),
                public_ip_addresses=[network.SubResourceArgs(id=nat_ip.id)], tags=tags, opts=child)
        self.vnet = network.VirtualNetwork(
            names["vnet"], virtual_network_name=names["vnet"], resource_group_name=args.resource_group_name,
            location=args.location, tags=tags,
            address_space=network.AddressSpaceArgs(address_prefixes=[spec.azure_options.vnet_cidr]),
            subnets=[network.SubnetArgs(
                name=azure.SUBNET_NAME, address_prefix=spec.azure_options.subnet_cidr, default_outbound_access=False,
                network_security_group=network.NetworkSecurityGroupArgs(id=self.nsg.id),
                nat_gateway=network.SubResourceArgs(id=self.nat.id) if self.nat else None,
                # Linux nodes reach the cluster's Key Vault through the subnet (the vault denies every other network)
                service_endpoints=[network.ServiceEndpointPropertiesFormatArgs(service="Microsoft.KeyVault")]
                if spec.os == "linux" else None)],
            opts=child)
        self.subnet_id = pulumi.Output.concat(self.vnet.id, "/subnets/", azure.SUBNET_NAME)
        self.register_outputs({"subnet_id": self.subnet_id, "nsg_id": self.nsg.id})
