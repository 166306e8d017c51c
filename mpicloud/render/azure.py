"""Azure facts shared by the ARM template and the Pulumi program: images, NSG rules, names, tags, roles."""

from __future__ import annotations

from dataclasses import dataclass

from mpicloud.errors import RenderError
from mpicloud.render.quoting import posix_join
from mpicloud.spec.model import ClusterSpec

COMPUTE_API = "2024-11-01"
NETWORK_API = "2024-05-01"
AUTHORIZATION_API = "2022-04-01"
IMAGE_PUBLISHER = "MicrosoftWindowsServer"
IMAGE_OFFER = "WindowsServer"
#: Gen2 Datacenter images per windows_version; `version: latest` always
IMAGE_SKUS = {"2022": "2022-datacenter-g2", "2025": "2025-datacenter-g2"}
#: the bootstrap extension (one CustomScriptExtension per VM)
EXTENSION = {"publisher": "Microsoft.Compute", "type": "CustomScriptExtension", "typeHandlerVersion": "1.10"}
EXTENSION_NAME = "bootstrap"
#: built-in role "Virtual Machine Contributor": lets the head node deallocate the cluster's VMs when idle
VM_CONTRIBUTOR_ROLE = "9980e02c-c2be-4d73-94e8-173b1dc7cf3c"
OS_DISK_TYPE = "Premium_LRS"
SUBNET_NAME = "cluster"


@dataclass(frozen=True)
class InboundRule:
    """One NSG allow rule from the outside (SSH, RDP); intra-VNet traffic is allowed by Azure's defaults."""

    name: str
    priority: int
    port: int
    description: str


INBOUND = (InboundRule("allow-ssh", 100, 22, "SSH and SFTP from the allowed networks"),
           InboundRule("allow-rdp", 110, 3389, "RDP from the allowed networks"))


def allowed_sources(spec: ClusterSpec) -> list[str]:
    """NSG source prefixes: the spec's allowed_cidrs (never `*`; an explicit 0.0.0.0/0 stays explicit)."""
    if not spec.access.allowed_cidrs:
        raise RenderError("access.allowed_cidrs is empty: nobody could reach SSH/RDP; add your network "
                          "(e.g. 203.0.113.7/32)")
    return list(spec.access.allowed_cidrs)


def tags(spec: ClusterSpec) -> dict[str, str]:
    """Tags on every taggable resource."""
    return {**spec.tags, "mpicloud-cluster": spec.name}


def resource_names(spec: ClusterSpec) -> dict[str, str]:
    """Azure names of the cluster-wide resources (per-node resources are named after the node: N0, N0-nic ...)."""
    return {"vnet": f"{spec.name}-vnet", "nsg": f"{spec.name}-nsg", "ppg": f"{spec.name}-ppg",
            "nat": f"{spec.name}-nat", "nat_ip": f"{spec.name}-nat-ip"}


def image_reference(windows_version: str) -> dict[str, str]:
    """The marketplace image of a Windows Server version."""
    return {"publisher": IMAGE_PUBLISHER, "offer": IMAGE_OFFER, "sku": IMAGE_SKUS[windows_version],
            "version": "latest"}


def attach_command(cluster: str, host: str, user: str, password_env: str) -> str:
    """The `mpicloud attach` line printed after a deployment (the password stays in the variable)."""
    return posix_join(["mpicloud", "attach", cluster, "--host", host, "--user", user, "--password-env", password_env,
                       "--os", "windows"])
