"""What a Linux cluster on Azure adds to the program: the cluster's Key Vault, its roles for the node identities, and
the VM inputs of a Linux node (custom data, SSH key only, the runner in userData, tags the node reads)."""

from __future__ import annotations

import hashlib

import pulumi
from pulumi_azure_native import authorization, compute, keyvault

from mpicloud.render import azure
from mpicloud.render.azure import cloud_init
from mpicloud.spec import ClusterSpec

#: Resource Manager endpoint of the public cloud (the ARM template uses environment().resourceManager)
ARM_ENDPOINT = "https://management.azure.com/"


def addresses(spec: ClusterSpec) -> list[str]:
    """The nodes' fixed private addresses (the custom data lists them)."""
    return cloud_init.node_addresses(spec.azure_options.subnet_cidr, spec.node_count)


def vault_name(subscription: str, group: str, cluster: str) -> str:
    """A globally unique, stable vault name (3-24 characters) for one cluster in one resource group."""
    return "mpi" + hashlib.sha256(f"{subscription}/{group}/{cluster}".encode()).hexdigest()[:13]


def vault(spec: ClusterSpec, group: pulumi.Input[str], location: pulumi.Input[str], subnet_id: pulumi.Input[str],
          opts: pulumi.ResourceOptions) -> keyvault.Vault:
    """The cluster's Key Vault: RBAC only, reachable from the cluster subnet only, soft delete for 7 days."""
    config = authorization.get_client_config_output()
    name = pulumi.Output.all(config.subscription_id, group).apply(lambda v: vault_name(v[0], v[1], spec.name))
    return keyvault.Vault(
        f"{spec.name}-vault", vault_name=name, resource_group_name=group, location=location, tags=azure.tags(spec),
        properties=keyvault.VaultPropertiesArgs(
            tenant_id=config.tenant_id, sku=keyvault.SkuArgs(family="A", name="standard"),
            enable_rbac_authorization=True, enable_soft_delete=True, soft_delete_retention_in_days=7,
            network_acls=keyvault.NetworkRuleSetArgs(
                default_action="Deny", bypass="None",
                virtual_network_rules=[keyvault.VirtualNetworkRuleArgs(id=subnet_id)])),
        opts=opts)


def grant_vault(node: str, index: int, vm: compute.VirtualMachine, store: keyvault.Vault,
                opts: pulumi.ResourceOptions) -> authorization.RoleAssignment:
    """Node0's identity writes the vault's secrets, every other node's reads them; nothing beyond this vault."""
    role = azure.SECRETS_OFFICER if index == 0 else azure.SECRETS_USER
    subscription = authorization.get_client_config_output().subscription_id
    return authorization.RoleAssignment(
        f"{node}-vault", scope=store.id, principal_type="ServicePrincipal",
        role_definition_id=pulumi.Output.concat("/subscriptions/", subscription,
                                                "/providers/Microsoft.Authorization/roleDefinitions/", role),
        principal_id=vm.identity.apply(lambda identity: identity.principal_id if identity else ""),
        description="mpicloud: intra-cluster secrets (node0 writes, the others read)", opts=opts)


def vm_inputs(spec: ClusterSpec, index: int, store: keyvault.Vault) -> dict[str, object]:
    """The Linux-only VM inputs: custom data of its role, SSH key only, runner userData, tags the node reads."""
    tags = {**azure.tags(spec), **cloud_init.node_tags(
        str(spec.node_count), str(spec.slots_per_node), f"{spec.idle_shutdown_minutes or 0:g}", store.name,
        ARM_ENDPOINT)}
    user = spec.admin.username
    return dict(
        tags=tags, user_data=cloud_init.runner_user_data(),
        identity=compute.VirtualMachineIdentityArgs(type="SystemAssigned"),
        os_profile=compute.OSProfileArgs(
            computer_name=spec.node_names[index], admin_username=user,
            custom_data=cloud_init.custom_data(spec, index, addresses(spec)),
            linux_configuration=compute.LinuxConfigurationArgs(
                disable_password_authentication=True, provision_vm_agent=True,
                ssh=compute.SshConfigurationArgs(public_keys=[compute.SshPublicKeyArgs(
                    path=f"/home/{user}/.ssh/authorized_keys", key_data=spec.admin.ssh_public_key)]))),
        image_reference=compute.ImageReferenceArgs(**cloud_init.image_reference(spec)))
