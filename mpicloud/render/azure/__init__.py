"""Azure facts shared by the ARM template and the Pulumi program: images, NSG rules, names, tags, roles."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from mpicloud.errors import RenderError
from mpicloud.protocol.pool import AZURE_COMPUTE_API
from mpicloud.render.runner_config import NODE_PYTHON, pool_config, runner_root
from mpicloud.spec.model import ClusterSpec

COMPUTE_API = AZURE_COMPUTE_API  # the head's node actions call the same version
NETWORK_API = "2024-05-01"
AUTHORIZATION_API = "2022-04-01"
IMAGE_PUBLISHER = "MicrosoftWindowsServer"
IMAGE_OFFER = "WindowsServer"
#: Gen2 Datacenter images per windows_version; `version: latest` always
IMAGE_SKUS = {"2022": "2022-datacenter-g2", "2025": "2025-datacenter-g2"}
#: the bootstrap extension (one CustomScriptExtension per VM)
EXTENSION = {"publisher": "Microsoft.Compute", "type": "CustomScriptExtension", "typeHandlerVersion": "1.10"}
EXTENSION_NAME = "bootstrap"
#: the InfiniBand driver of Windows nodes on RDMA sizes (MS-MPI uses it through NetworkDirect)
INFINIBAND_WINDOWS = {"publisher": "Microsoft.HpcCompute", "type": "InfiniBandDriverWindows",
                      "typeHandlerVersion": "1.5"}
INFINIBAND_NAME = "infiniband"
#: the only actions of the custom role the head node's identity gets (idle shutdown): read and deallocate VMs;
#: not "Virtual Machine Contributor", which allows Run Command and extension writes (code as SYSTEM everywhere)
DEALLOCATE_ACTIONS = ("Microsoft.Compute/virtualMachines/read", "Microsoft.Compute/virtualMachines/deallocate/action")
#: an elastic cluster's head also starts its compute VMs again (provision/runner/azure_nodes.py); nothing else
ELASTIC_ACTIONS = (*DEALLOCATE_ACTIONS, "Microsoft.Compute/virtualMachines/start/action")
#: an elastic cluster's compute VM unreachable this long is replaced (deallocated, started again): longer than the
#: pool's default (2 minutes), which a VM still provisioning after the deployment would exceed
REPLACE_UNREACHABLE_SECONDS = 1800.0
SUBNET_NAME = "cluster"
#: built-in roles on a Linux cluster's Key Vault: node0 writes the intra-cluster secrets, the other nodes read them
SECRETS_OFFICER = "b86a8fe4-44ce-4948-aee5-eccb2c155cd7"
SECRETS_USER = "4633458b-17de-408a-b874-0445c86b69e6"
#: who may create role definitions and assignments (what idle shutdown needs beyond Contributor)
ROLE_ADMINS = "Owner or User Access Administrator"
#: patch modes of Windows VMs (osProfile.windowsConfiguration.patchSettings.patchMode)
PATCH_MODES = ("Manual", "AutomaticByOS", "AutomaticByPlatform")


@dataclass(frozen=True)
class InboundRule:
    """One NSG allow rule from the outside (SSH, RDP); intra-VNet traffic is allowed by Azure's defaults."""

    name: str
    priority: int
    port: int
    description: str


INBOUND = (InboundRule("allow-ssh", 100, 22, "SSH and SFTP from the allowed networks"),
           InboundRule("allow-rdp", 110, 3389, "RDP from the allowed networks"))
#: Azure sizes with InfiniBand offered by the portal form of an RDMA cluster (the spec accepts any, see spec/sizes.py)
RDMA_SIZES = ("Standard_HB120rs_v3", "Standard_HB176rs_v4", "Standard_HX176rs", "Standard_HC44rs",
              "Standard_HB120rs_v2")


def inbound(spec: ClusterSpec) -> tuple[InboundRule, ...]:
    """The NSG allow rules of the spec's OS: SSH everywhere, RDP on Windows only."""
    return INBOUND if spec.os == "windows" else tuple(r for r in INBOUND if r.port != 3389)


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
    """Azure names of the cluster-wide resources; per-node ones are vm_name(...) plus -nic / -ip."""
    return {"vnet": f"{spec.name}-vnet", "nsg": f"{spec.name}-nsg", "ppg": f"{spec.name}-ppg",
            "nat": f"{spec.name}-nat", "nat_ip": f"{spec.name}-nat-ip"}


def vm_name(cluster: str, node: str) -> str:
    """Resource name of a node's VM: the cluster name first, so two clusters can share a resource group
    (the computer name stays the node name, N0 ..., which each cluster's own VNet resolves)."""
    return f"{cluster}-{node}"


def os_disk_type(size: str) -> str:
    """Premium_LRS when the size supports premium storage (an 's' among the feature letters after the vCPU
    count: Standard_D4s_v5, Standard_HB120rs_v3), else StandardSSD_LRS (Standard_D4_v5, Standard_A2_v2).

    The same rule as the ARM template's os_disk_type_expression: the letters after the size's last digit."""
    parts = size.split("_")
    if len(parts) < 2:
        raise RenderError(f"size {size!r} is not an Azure VM size such as Standard_D4s_v5")
    features = re.split(r"[0-9]", parts[1])[-1]
    return "Premium_LRS" if "s" in features.lower() else "StandardSSD_LRS"


def os_disk_type_expression(size: str) -> str:
    """The ARM expression of os_disk_type for a size expression (split on every digit, keep the last piece)."""
    digits = ", ".join(f"'{d}'" for d in "0123456789")
    features = f"last(split(split({size}, '_')[1], createArray({digits})))"
    return f"if(contains(toLower({features}), 's'), 'Premium_LRS', 'StandardSSD_LRS')"


def image_reference(windows_version: str) -> dict[str, str]:
    """The marketplace image of a Windows Server version."""
    return {"publisher": IMAGE_PUBLISHER, "offer": IMAGE_OFFER, "sku": IMAGE_SKUS[windows_version],
            "version": "latest"}


def node_pool(spec: ClusterSpec, ready_ports: tuple[int, ...] = (22,)) -> dict[str, Any] | None:
    """runner.json's `pool` of an elastic cluster (None for a fixed one): start/deallocate the compute VMs with
    provision/runner/azure_nodes.py under the head's Python. `pool.azure` holds what the template knows; the head's
    bootstrap adds the deployment's values at boot (`azure_nodes.py configure`: subscription, resource group, VM
    name prefix, Resource Manager), no secrets. A started node counts as up once each of `ready_ports` answers."""
    if spec.elastic is None:
        return None
    platform = spec.target.platform

    def command(action: str) -> list[str]:
        return [NODE_PYTHON[spec.os], platform.path("azure_nodes.py"), action, "--root",
                runner_root(spec.shared_storage.path)]
    settings = {"api_version": COMPUTE_API, "ready_ports": list(ready_ports)}
    # an idle shutdown deallocates every VM; the head starts alone: compute nodes that were up start again. A
    # compute VM's first boot (cloud-init or the bootstrap, many minutes) must not count as a broken node
    return {**pool_config(spec, command("resume"), command("suspend")), "resume_after_pause": True,
            "replace_unreachable_seconds": REPLACE_UNREACHABLE_SECONDS, "azure": settings}


def configure_command(spec: ClusterSpec, arm: str | None = None) -> list[str]:
    """The head's boot command that fills in pool.azure (`arm`: the Resource Manager endpoint, else the VM's tag)."""
    return [NODE_PYTHON[spec.os], spec.target.platform.path("azure_nodes.py"), "configure", "--root",
            runner_root(spec.shared_storage.path), *(["--arm", arm] if arm else [])]
