"""The nodes: optional proximity placement group, per node a public IP (or none), NIC, VM and (Windows) bootstrap
extension or (Linux) cloud-init custom data and the cluster's Key Vault."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
from pulumi_azure_native import authorization, compute, keyvault, network

from azure_mpi import linux
from azure_mpi.linux import ARM_ENDPOINT
from azure_mpi.network import NetworkArgs, public_ip
from mpicloud.render import azure, blobaccess, windows_bootstrap
from mpicloud.render.azure import powershell
from mpicloud.spec import ClusterSpec
from mpicloud.spec.model import BlobContainer


@dataclass
class NodesArgs:
    """Inputs of the node set."""

    spec: ClusterSpec
    resource_group_name: pulumi.Input[str]
    location: pulumi.Input[str]
    subnet_id: pulumi.Input[str]
    admin_password: pulumi.Input[str] | None


class Node(pulumi.ComponentResource):
    """One VM with its NIC and optional public IP; Windows: the bootstrap extension, Linux: custom data and a fixed
    private address (`store`: the cluster's Key Vault)."""

    def __init__(self, name: str, index: int, args: NodesArgs, ppg: compute.ProximityPlacementGroup | None,
                 script: str, store: keyvault.Vault | None, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("mpicloud:azure:Node", name, None, opts)
        self.node_name = name
        spec, tags, child = args.spec, azure.tags(args.spec), pulumi.ResourceOptions(parent=self)
        options = spec.azure_options
        self.public_ip = None
        resource = azure.vm_name(spec.name, name)
        if options.public_ip == "per_node" or index == 0:
            self.public_ip = public_ip(f"{resource}-ip", NetworkArgs(spec, args.resource_group_name, args.location),
                                       self)
        self.nic = network.NetworkInterface(
            f"{name}-nic", network_interface_name=f"{resource}-nic", resource_group_name=args.resource_group_name,
            location=args.location, enable_accelerated_networking=options.accelerated_networking, tags=tags,
            ip_configurations=[network.NetworkInterfaceIPConfigurationArgs(
                name="ipconfig", subnet=network.SubnetArgs(id=args.subnet_id),
                **({"private_ip_allocation_method": "Static", "private_ip_address": linux.addresses(spec)[index]}
                   if store else {"private_ip_allocation_method": "Dynamic"}),
                public_ip_address=network.PublicIPAddressArgs(id=self.public_ip.id) if self.public_ip else None)],
            opts=child)
        # the bootstrap is userData (updated in place); a new password or image must not replace the VM (and
        # wipe C:\shared on N0): ARM refuses to change adminPassword, and the image is pinned at creation
        self.vm = compute.VirtualMachine(name, **_vm_args(name, index, args, self.nic, ppg, script, store),
                                         opts=pulumi.ResourceOptions(parent=self, ignore_changes=VM_IGNORED))
        self.private_ip = self.nic.ip_configurations.apply(
            lambda configs: (configs[0].private_ip_address or "") if configs else "")
        self.extension: compute.VirtualMachineExtension | None = None
        if store is not None:
            self.vault_role = linux.grant_vault(name, index, self.vm, store, child)
            self.register_outputs({"vm_id": self.vm.id, "private_ip": self.private_ip})
            return
        self.extension = compute.VirtualMachineExtension(
            f"{name}-{azure.EXTENSION_NAME}", vm_extension_name=azure.EXTENSION_NAME, vm_name=self.vm.name,
            resource_group_name=args.resource_group_name, location=args.location, tags=tags,
            publisher=azure.EXTENSION["publisher"], type=azure.EXTENSION["type"],
            type_handler_version=azure.EXTENSION["typeHandlerVersion"], auto_upgrade_minor_version=True,
            force_update_tag=powershell.force_update_tag(script),
            settings={"timestamp": powershell.script_version(script)},
            protected_settings=pulumi.Output.secret(pulumi.Output.from_input(args.admin_password).apply(
                lambda password: {"commandToExecute": _command(spec, index, script),
                                  powershell.PASSWORD_SETTING: password})),
            opts=child)
        if spec.azure_options.rdma:
            self.infiniband = compute.VirtualMachineExtension(
                f"{name}-{azure.INFINIBAND_NAME}", vm_extension_name=azure.INFINIBAND_NAME, vm_name=self.vm.name,
                resource_group_name=args.resource_group_name, location=args.location, tags=tags,
                publisher=azure.INFINIBAND_WINDOWS["publisher"], type=azure.INFINIBAND_WINDOWS["type"],
                type_handler_version=azure.INFINIBAND_WINDOWS["typeHandlerVersion"], auto_upgrade_minor_version=True,
                opts=child)
        self.register_outputs({"vm_id": self.vm.id, "private_ip": self.private_ip})


#: VM inputs a later `pulumi up` leaves alone (osProfile is fixed at creation; the image is pinned)
VM_IGNORED = ["osProfile.adminPassword", "osProfile.customData", "storageProfile.imageReference"]


def _windows_inputs(name: str, index: int, args: NodesArgs, script: str) -> dict[str, object]:
    spec = args.spec
    patch = spec.azure_options.patch_mode
    identity = compute.VirtualMachineIdentityArgs(type="SystemAssigned") \
        if index == 0 and (spec.idle_shutdown_minutes or spec.blob_identity or spec.elastic) else None
    return dict(
        tags=azure.tags(spec), identity=identity, user_data=powershell.user_data(script),
        os_profile=compute.OSProfileArgs(
            computer_name=name, admin_username=spec.admin.username, admin_password=args.admin_password,
            windows_configuration=compute.WindowsConfigurationArgs(
                provision_vm_agent=True, enable_automatic_updates=patch != "Manual",
                patch_settings=compute.PatchSettingsArgs(patch_mode=patch))),
        image_reference=compute.ImageReferenceArgs(**azure.image_reference(spec.azure_options.windows_version)))


def _vm_args(name: str, index: int, args: NodesArgs, nic: network.NetworkInterface,
             ppg: compute.ProximityPlacementGroup | None, script: str,
             store: keyvault.Vault | None) -> dict[str, object]:
    spec = args.spec
    inputs = linux.vm_inputs(spec, index, store) if store else _windows_inputs(name, index, args, script)
    image = inputs.pop("image_reference")
    return dict(
        vm_name=azure.vm_name(spec.name, name), resource_group_name=args.resource_group_name, location=args.location,
        hardware_profile=compute.HardwareProfileArgs(vm_size=spec.size), **inputs,
        storage_profile=compute.StorageProfileArgs(
            image_reference=image,
            os_disk=compute.OSDiskArgs(create_option="FromImage", delete_option="Delete",
                                       managed_disk=compute.ManagedDiskParametersArgs(
                                           storage_account_type=azure.os_disk_type(spec.size or "")))),
        network_profile=compute.NetworkProfileArgs(network_interfaces=[
            compute.NetworkInterfaceReferenceArgs(id=nic.id, delete_option="Delete")]),
        diagnostics_profile=compute.DiagnosticsProfileArgs(boot_diagnostics=compute.BootDiagnosticsArgs(enabled=True)),
        proximity_placement_group=compute.SubResourceArgs(id=ppg.id) if ppg else None)


def _command(spec: ClusterSpec, index: int, script: str) -> str:
    return powershell.bootstrap_command({
        "NodeIndex": str(index), "NodeCount": str(spec.node_count), "SlotsPerNode": str(spec.slots_per_node),
        "IdleMinutes": str(spec.idle_shutdown_minutes or 0), "ArmEndpoint": ARM_ENDPOINT,
        "AdminUserB64": powershell.b64(spec.admin.username), "VmPrefixB64": powershell.b64(spec.name),
        "AdminKeyB64": powershell.key_b64(spec.admin.ssh_public_key),
        "PasswordSsh": "1" if spec.azure_options.password_ssh else "0"}, script)


class Nodes(pulumi.ComponentResource):
    """All nodes, their placement group, and the head node's permissions: deallocate them when idle, start and
    deallocate the compute VMs of an elastic cluster."""

    def __init__(self, name: str, args: NodesArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("mpicloud:azure:Nodes", name, None, opts)
        spec, child = args.spec, pulumi.ResourceOptions(parent=self)
        self.ppg = None
        if spec.azure_options.proximity_placement_group:
            ppg_name = azure.resource_names(spec)["ppg"]
            self.ppg = compute.ProximityPlacementGroup(
                ppg_name, proximity_placement_group_name=ppg_name, resource_group_name=args.resource_group_name,
                location=args.location, proximity_placement_group_type="Standard", tags=azure.tags(spec), opts=child)
        linux_nodes = spec.os == "linux"
        script = "" if linux_nodes else windows_bootstrap.bootstrap_ps1(spec)
        self.vault = linux.vault(spec, args.resource_group_name, args.location, args.subnet_id, child) \
            if linux_nodes else None
        self.nodes = [Node(n, i, args, self.ppg, script, self.vault, child) for i, n in enumerate(spec.node_names)]
        self.head_principal = self.nodes[0].vm.identity.apply(
            lambda identity: identity.principal_id if identity else "")
        self.deallocate_roles: list[authorization.RoleAssignment] = []
        if spec.idle_shutdown_minutes:
            self.deallocate_roles = self._grant_head(
                args, "deallocate", "idle shutdown: the head node may read and deallocate the cluster's VMs",
                azure.DEALLOCATE_ACTIONS, self.nodes, "the head node deallocates the cluster when idle", child)
        self.elastic_roles: list[authorization.RoleAssignment] = []
        if spec.elastic:  # every compute VM is created here; the head's pool deallocates the idle ones (nodes.json)
            self.elastic_roles = self._grant_head(
                args, "elastic", "elastic pool: the head node may read, start and deallocate the compute VMs",
                azure.ELASTIC_ACTIONS, self.nodes[1:],
                "the head node starts and deallocates compute VMs with the queue", child)
        if spec.blob_identity and spec.blob_container and spec.blob_container.resource_group:
            self._grant_blob(spec.blob_container, child)
        self.register_outputs({"names": [n.vm.name for n in self.nodes]})

    def _grant_blob(self, container: BlobContainer, opts: pulumi.ResourceOptions) -> None:
        """The head's two ABAC-conditioned assignments on the customer's container (render.blobaccess)."""
        subscription = authorization.get_client_config_output().subscription_id
        scope = subscription.apply(lambda sub: blobaccess.container_scope(
            sub, container.resource_group or "", container.account, container.container))
        for assignment in blobaccess.role_assignments(container):
            role = assignment["role"]
            authorization.RoleAssignment(
                f"{self.nodes[0].node_name}-blob-{blobaccess.ROLE_PREFIX[role]}", scope=scope,
                role_definition_id=subscription.apply(
                    lambda sub, r=role: f"/subscriptions/{sub}/providers/Microsoft.Authorization/roleDefinitions/{r}"),
                principal_type="ServicePrincipal", principal_id=self.head_principal,
                condition=assignment["condition"], condition_version=blobaccess.CONDITION_VERSION,
                description=f"mpicloud: the {blobaccess.ROLE_PREFIX[role]} prefix of the cluster's container only",
                opts=opts)

    def _grant_head(self, args: NodesArgs, key: str, what: str, actions: tuple[str, ...], nodes: list[Node],
                    why: str, opts: pulumi.ResourceOptions) -> list[authorization.RoleAssignment]:
        """A custom role (`actions` only) for the head's identity, assigned on each of `nodes`' VMs (its scope)."""
        group = authorization.get_client_config_output().subscription_id.apply(
            lambda sub: f"/subscriptions/{sub}/resourceGroups/")
        scope = pulumi.Output.concat(group, args.resource_group_name)
        role = authorization.RoleDefinition(
            f"{args.spec.name}-{key}-role", scope=scope,
            role_name=pulumi.Output.concat(f"mpicloud {key} ", args.spec.name, " (", args.resource_group_name, ")"),
            role_type="CustomRole", assignable_scopes=[scope], description=f"mpicloud {what}",
            permissions=[authorization.PermissionArgs(actions=list(actions), not_actions=[])], opts=opts)
        return [authorization.RoleAssignment(
                    f"{node.node_name}-{key}", scope=node.vm.id, role_definition_id=role.id,
                    principal_type="ServicePrincipal", principal_id=self.head_principal,
                    description=f"mpicloud: {why}", opts=opts)
                for node in nodes]
