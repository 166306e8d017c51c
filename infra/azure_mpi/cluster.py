"""The whole cluster as one component: resource group, network, nodes, and the outputs a client needs."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
from pulumi_azure_native import compute, resources

from azure_mpi.network import Network, NetworkArgs
from azure_mpi.nodes import Nodes, NodesArgs
from mpicloud.render import azure
from mpicloud.render.azure import powershell
from mpicloud.spec import ClusterSpec

#: the stack secret holding the admin password: `pulumi config set --secret mpicloud:adminPassword`
PASSWORD_CONFIG = "adminPassword"


@dataclass
class MpiClusterArgs:
    """Inputs of the cluster: the spec and, for Windows, the admin password (deploy() reads it from the stack's secret
    config); Linux nodes have SSH keys only."""

    spec: ClusterSpec
    admin_password: pulumi.Input[str] | None = None


class MpiCluster(pulumi.ComponentResource):
    """A Windows Server MS-MPI cluster (N0 is the head node: runner, C:\\shared; SSH/SFTP and RDP) or a Linux Open MPI
    cluster (node0: runner, /shared; SSH/SFTP)."""

    def __init__(self, name: str, args: MpiClusterArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("mpicloud:azure:MpiCluster", name, None, opts)
        spec = self.spec = args.spec
        child = pulumi.ResourceOptions(parent=self)
        password = pulumi.Output.secret(args.admin_password) if args.admin_password is not None else None
        group_name = spec.azure_options.resource_group or f"{spec.name}-rg"
        self.group = resources.ResourceGroup(group_name, resource_group_name=group_name, location=spec.region,
                                             tags=azure.tags(spec), opts=child)
        self.network = Network(f"{name}-network", NetworkArgs(spec, self.group.name, self.group.location), child)
        self.nodes = Nodes(f"{name}-nodes", NodesArgs(spec, self.group.name, self.group.location,
                                                      self.network.subnet_id, password), child)
        self.register_outputs(self.outputs())

    def outputs(self) -> dict[str, pulumi.Input[object]]:
        """Public and private IPs, admin user, SSH and attach commands, host key fingerprints (no secrets)."""
        nodes, spec = self.nodes.nodes, self.spec
        head_ip = nodes[0].public_ip.ip_address if nodes[0].public_ip else pulumi.Output.from_input("")
        return {
            "public_ips": pulumi.Output.all(*[n.public_ip.ip_address if n.public_ip else "" for n in nodes]),
            "private_ips": pulumi.Output.all(*[n.private_ip for n in nodes]),
            "admin_username": spec.admin.username,
            "ssh_command": pulumi.Output.concat("ssh ", spec.admin.username, "@", head_ip),
            "attach_command": head_ip.apply(lambda ip: spec.target.attach_command(
                spec.name, ip or "N0-public-IP", spec.admin.username, spec.slots_per_node,
                spec.admin.password.env if spec.admin.password else None)),
            "password_only": spec.password_only,
            "head_principal_id": self.nodes.head_principal,
            "host_key_fingerprints": self._host_keys(),
        }

    def _host_keys(self) -> pulumi.Input[object]:
        """Windows: the fingerprints the bootstrap printed; Linux: the command that reads cloud-init's from the boot
        log (Pulumi cannot read it)."""
        nodes = self.nodes.nodes
        if self.spec.os == "linux":
            return pulumi.Output.concat("az vm boot-diagnostics get-boot-log -g ", self.group.name, " -n ",
                                        nodes[0].vm.name, " | sed -n '/BEGIN SSH HOST KEY FINGERPRINTS/,"
                                        "/END SSH HOST KEY FINGERPRINTS/p'")
        return pulumi.Output.all(*[_host_keys(self.group.name, n.vm.name, n.extension.name)
                                   for n in nodes if n.extension]).apply(_merge)


def _host_keys(group: pulumi.Input[str], vm: pulumi.Input[str], extension: pulumi.Input[str]
               ) -> pulumi.Output[dict[str, list[str]]]:
    """The fingerprints the bootstrap printed, read back from the extension's instance view after it ran."""
    result = compute.get_virtual_machine_extension_output(resource_group_name=group, vm_name=vm,
                                                          vm_extension_name=extension, expand="instanceView")
    return result.apply(lambda ext: powershell.host_key_fingerprints(" ".join(
        status.message or "" for status in ((ext.instance_view.substatuses or []) if ext.instance_view else []))))


def _merge(parts: list[dict[str, list[str]]]) -> dict[str, list[str]]:
    merged: dict[str, list[str]] = {}
    for part in parts:
        merged.update(part)
    return merged
