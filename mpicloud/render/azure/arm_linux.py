"""The ARM template and portal form of a Linux Open MPI cluster on Azure (templates/arm/linux/): the network of
render/arm.py, VMs booting the cloud-init custom data, the cluster's Key Vault and the identities' roles on it."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

from mpicloud.errors import RenderError
from mpicloud.render import arm, azure
from mpicloud.render.arm import _base, _limits, _loop, _node, _p, _rid
from mpicloud.render.arm_ui import NUMBER_LIMITS, _dropdown, _number
from mpicloud.render.arm_ui import SCHEMA as UI_SCHEMA
from mpicloud.render.azure import cloud_init
from mpicloud.render.cloud_config import FIRST_HOST
from mpicloud.spec import ClusterSpec, load_spec

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "azure-linux.yaml"
KEYVAULT_API = "2023-07-01"
NODE = _node("", "node")
VAULT = "variables('vaultName')"
Json = dict[str, Any]


def max_nodes(spec: ClusterSpec) -> int:
    """The template's node limit: the spec's limit, or fewer when the subnet has no fixed address for more."""
    hosts = ipaddress.ip_network(spec.azure_options.subnet_cidr, strict=False).num_addresses - 2
    return min(NUMBER_LIMITS["nodeCount"][1], hosts - FIRST_HOST)


def parameters(spec: ClusterSpec) -> Json:
    """Template parameters; defaults come from the example spec. No password: SSH keys only."""
    def meta(text: str) -> Json:
        return {"metadata": {"description": text}}
    size: Json = {"allowedValues": list(azure.RDMA_SIZES)} if spec.azure_options.rdma else {}
    return {
        "location": {"type": "string", "defaultValue": "[resourceGroup().location]", **meta("Azure region")},
        "clusterName": {"type": "string", "defaultValue": spec.name, "minLength": 2, "maxLength": 32,
                        **meta("prefix of every resource name (lower-case letters, digits, '-')")},
        "nodeCount": {"type": "int", "defaultValue": spec.node_count, "minValue": 1, "maxValue": max_nodes(spec),
                      **meta("number of Linux VMs (node0 is the head node)")},
        "vmSize": {"type": "string", "defaultValue": spec.size, **size,
                   **meta("VM size of every node" + (" (InfiniBand sizes: MPI uses UCX over RDMA)" if size else ""))},
        "slotsPerNode": {"type": "int", "defaultValue": spec.slots_per_node, **_limits("slotsPerNode"),
                         **meta("MPI ranks per node (usually the size's core count)")},
        "adminUsername": {"type": "string", "minLength": 1, "maxLength": 20,
                          **meta("administrator on every node (SSH key logins only)")},
        "adminSshPublicKey": {"type": "string", "minLength": 16,
                              **meta("OpenSSH public key of the administrator (ssh-ed25519 or ssh-rsa)")},
        "allowedSourceCidr": {"type": "string", "minLength": 9,
                              **meta("the only network allowed to reach SSH (22), e.g. 203.0.113.7/32")},
        "linuxImage": {"type": "string", "defaultValue": spec.azure_options.linux_image,
                       "allowedValues": sorted(cloud_init.IMAGES),
                       **meta("ubuntu-hpc: Microsoft's Ubuntu HPC image (InfiniBand drivers); ubuntu: plain Ubuntu")},
        "acceleratedNetworking": {"type": "bool", "defaultValue": spec.azure_options.accelerated_networking,
                                  **meta("accelerated networking (the VM size must support it)")},
        "idleShutdownMinutes": {"type": "int", "defaultValue": 0, **_limits("idleShutdownMinutes"),
                                **meta("deallocate every VM after this many idle minutes (0: never). Above 0 the "
                                       "deployment creates a custom role and role assignments, which needs "
                                       f"{azure.ROLE_ADMINS} on the resource group")},
    }


def variables(spec: ClusterSpec) -> Json:
    """Names, tags (the nodes read theirs over IMDS), fixed private addresses and the custom data (no secrets)."""
    ips = cloud_init.node_addresses(spec.azure_options.subnet_cidr, max_nodes(spec))
    names = {key: f"[format('{{0}}{value[len(spec.name):]}', parameters('clusterName'))]"
             for key, value in azure.resource_names(spec).items() if key in ("vnet", "nsg", "ppg")}
    return {
        "names": names, "tags": {**azure.tags(spec), "mpicloud-cluster": "[parameters('clusterName')]"},
        "nodeTags": cloud_init.node_tags(
            f"[string({_p('nodeCount')})]", f"[string({_p('slotsPerNode')})]", f"[string({_p('idleShutdownMinutes')})]",
            f"[{VAULT}]", "[environment().resourceManager]"),
        "vaultName": "[format('mpi{0}', uniqueString(resourceGroup().id, parameters('clusterName')))]",
        "images": {name: {**image, "version": "latest"} for name, image in cloud_init.IMAGES.items()},
        "privateIps": ips,
        "headCustomData": cloud_init.custom_data(spec, 0, ips),
        "workerCustomData": cloud_init.custom_data(spec, None, ips),
        "runnerUserData": cloud_init.runner_user_data(),
        "subnetId": f"[{_rid('Microsoft.Network/virtualNetworks/subnets', arm.VNET, arm._lit(azure.SUBNET_NAME))}]",
    }


def network(spec: ClusterSpec) -> list[Json]:
    """render/arm.py's network with SSH only, fixed private addresses and a Key Vault service endpoint."""
    nsg, vnet, pip, nic = arm.network(spec)
    vnet["properties"]["subnets"][0]["properties"]["serviceEndpoints"] = [{"service": "Microsoft.KeyVault"}]
    config = nic["properties"]["ipConfigurations"][0]["properties"]
    config.update(privateIPAllocationMethod="Static", privateIPAddress="[variables('privateIps')[copyIndex()]]")
    return [nsg, vnet, pip, nic]


def vault() -> Json:
    """The cluster's Key Vault (RBAC, reachable from the cluster subnet only): the intra-cluster secrets."""
    return {**_base("Microsoft.KeyVault/vaults", KEYVAULT_API, f"[{VAULT}]"),
            "dependsOn": [f"[{_rid('Microsoft.Network/virtualNetworks', arm.VNET)}]"],
            "properties": {"tenantId": "[subscription().tenantId]", "sku": {"family": "A", "name": "standard"},
                           "enableRbacAuthorization": True, "enableSoftDelete": True, "softDeleteRetentionInDays": 7,
                           "networkAcls": {"defaultAction": "Deny", "bypass": "None",
                                           "virtualNetworkRules": [{"id": "[variables('subnetId')]"}]}}}


def _vm(spec: ClusterSpec) -> Json:
    nic = f"[{_rid('Microsoft.Network/networkInterfaces', _node('-nic', 'node'))}]"
    depends = [nic]
    props: Json = {
        "hardwareProfile": {"vmSize": f"[{_p('vmSize')}]"},
        "osProfile": {
            "computerName": "[format('node{0}', copyIndex())]", "adminUsername": f"[{_p('adminUsername')}]",
            "customData": "[if(equals(copyIndex(), 0), variables('headCustomData'), variables('workerCustomData'))]",
            "linuxConfiguration": {
                "disablePasswordAuthentication": True, "provisionVMAgent": True,
                "ssh": {"publicKeys": [{"path": f"[format('/home/{{0}}/.ssh/authorized_keys', {_p('adminUsername')})]",
                                        "keyData": f"[{_p('adminSshPublicKey')}]"}]}}},
        "userData": "[variables('runnerUserData')]",
        "storageProfile": {
            "imageReference": f"[variables('images')[{_p('linuxImage')}]]",
            "osDisk": {"createOption": "FromImage", "deleteOption": "Delete",
                       "managedDisk": {"storageAccountType": f"[{azure.os_disk_type_expression(_p('vmSize'))}]"}}},
        "networkProfile": {"networkInterfaces": [{"id": nic, "properties": {"deleteOption": "Delete"}}]},
        "diagnosticsProfile": {"bootDiagnostics": {"enabled": True}},
    }
    if spec.azure_options.proximity_placement_group:
        ppg = f"[{_rid('Microsoft.Compute/proximityPlacementGroups', arm.PPG)}]"
        props["proximityPlacementGroup"] = {"id": ppg}
        depends.append(ppg)
    return {**_base("Microsoft.Compute/virtualMachines", azure.COMPUTE_API, f"[{NODE}]"), "copy": _loop("vms"),
            "dependsOn": depends, "properties": props, "identity": {"type": "SystemAssigned"},
            "tags": "[union(variables('tags'), variables('nodeTags'))]"}


def vault_roles() -> Json:
    """Each VM's identity on the vault only: node0 Key Vault Secrets Officer, the others Secrets User."""
    vm = _rid("Microsoft.Compute/virtualMachines", NODE)
    role = f"if(equals(copyIndex(), 0), '{azure.SECRETS_OFFICER}', '{azure.SECRETS_USER}')"
    return {"type": "Microsoft.Authorization/roleAssignments", "apiVersion": azure.AUTHORIZATION_API,
            "name": f"[guid(resourceGroup().id, {_p('clusterName')}, {NODE}, 'vault')]", "copy": _loop("vaultRoles"),
            "scope": f"[format('Microsoft.KeyVault/vaults/{{0}}', {VAULT})]",
            "dependsOn": [f"[{vm}]", f"[{_rid('Microsoft.KeyVault/vaults', VAULT)}]"],
            "properties": {
                "roleDefinitionId": f"[subscriptionResourceId('Microsoft.Authorization/roleDefinitions', {role})]",
                "principalId": f"[reference({vm}, '{azure.COMPUTE_API}', 'full').identity.principalId]",
                "principalType": "ServicePrincipal",
                "description": "mpicloud: intra-cluster secrets (node0 writes, the others read)"}}


def azuredeploy(spec: ClusterSpec, source: str = EXAMPLE.name) -> Json:
    """The whole deployment template (classic array-form resources, copy loops, no secrets); `source`: the spec
    file named in its description."""
    if (spec.cloud, spec.os) != ("azure", "linux"):
        raise RenderError("the Linux ARM template needs cloud azure and os linux")
    return {"$schema": arm.SCHEMA, "contentVersion": "1.0.0.0",
            "metadata": {"description": (
                f"mpicloud Linux Open MPI cluster (generated from {source}): cloud-init custom data, SSH keys "
                f"only, secrets in the cluster's own Key Vault. Idle shutdown needs {azure.ROLE_ADMINS}; the vault "
                f"roles need it too. {arm.elastic_note(spec)}".rstrip())},
            "parameters": parameters(spec), "variables": variables(spec),
            "resources": [*network(spec), vault(), *arm.placement(spec), _vm(spec), vault_roles(),
                          *arm.deallocate(spec), *arm.elastic(spec)],
            "outputs": arm.outputs(spec)}


def create_ui_definition(spec: ClusterSpec) -> Json:
    """The portal form: an SSH key instead of a password, the Linux image instead of the Windows version."""
    options, lim, steps = spec.azure_options, NUMBER_LIMITS, "steps('cluster')"
    basics = [
        {"name": "adminUsername", "type": "Microsoft.Compute.UserNameTextBox", "label": "Administrator user name",
         "osPlatform": "Linux", "toolTip": "the administrator on every node (SSH key logins only)",
         "constraints": {"required": True, "regex": "^[A-Za-z_][A-Za-z0-9_.-]{0,19}$",
                         "validationMessage": "1-20 letters, digits, '_', '.', '-', starting with a letter"}},
        {"name": "adminCredentials", "type": "Microsoft.Compute.CredentialsCombo", "osPlatform": "Linux",
         "label": {"authenticationType": "Authentication type", "password": "Password",
                   "confirmPassword": "Confirm password", "sshPublicKey": "SSH public key"},
         "toolTip": {"sshPublicKey": "OpenSSH public key of the administrator (ssh-ed25519 ...)"},
         "constraints": {"required": True}, "options": {"hideConfirmation": False, "hidePassword": True}},
        {"name": "allowedSourceCidr", "type": "Microsoft.Common.TextBox", "label": "Allowed source network",
         "toolTip": "only this network may reach SSH (22), e.g. your IP as 203.0.113.7/32",
         "constraints": {"required": True, "regex": r"^[0-9]{1,3}(\.[0-9]{1,3}){3}/[0-9]{1,2}$",
                         "validationMessage": "an IPv4 network such as 203.0.113.7/32"}},
    ]
    image = {k: v for k, v in cloud_init.image_reference(spec).items() if k != "version"}
    elements = [
        {"name": "clusterName", "type": "Microsoft.Common.TextBox", "label": "Cluster name",
         "defaultValue": spec.name, "toolTip": "prefix of every resource name; two clusters may share a group",
         "constraints": {"required": True, "regex": "^[a-z][a-z0-9-]{0,30}[a-z0-9]$",
                         "validationMessage": "2-32 lower-case letters, digits and '-', starting with a letter"}},
        _number("nodeCount", "Nodes", spec.node_count, 1, max_nodes(spec), "number of Linux VMs; node0 is the head"),
        {"name": "vmSize", "type": "Microsoft.Compute.SizeSelector", "label": "VM size", "osPlatform": "Linux",
         "toolTip": "size of every node", "recommendedSizes": [spec.size], "imageReference": image,
         "count": f"[{steps}.nodeCount]",
         **({"constraints": {"allowedSizes": list(azure.RDMA_SIZES)}} if options.rdma else {})},
        _number("slotsPerNode", "MPI ranks per node", spec.slots_per_node, *lim["slotsPerNode"],
                "usually the size's core count"),
        _dropdown("linuxImage", "Image", options.linux_image, [(n, n) for n in sorted(cloud_init.IMAGES)],
                  "ubuntu-hpc: Microsoft's Ubuntu HPC image with InfiniBand drivers; ubuntu: plain Ubuntu"),
        _dropdown("acceleratedNetworking", "Accelerated networking", "On" if options.accelerated_networking else "Off",
                  [("On", True), ("Off", False)], "needs a VM size that supports it"),
        _number("idleShutdownMinutes", "Idle shutdown (minutes)", 0, *lim["idleShutdownMinutes"],
                f"deallocate every VM after this many minutes without jobs; 0 never. Above 0 you need "
                f"{azure.ROLE_ADMINS} (a custom role and role assignments are created)"),
    ]
    outputs = {
        "location": "[location()]", "adminUsername": "[basics('adminUsername')]",
        "adminSshPublicKey": "[basics('adminCredentials').sshPublicKey]",
        "allowedSourceCidr": "[basics('allowedSourceCidr')]", "clusterName": f"[{steps}.clusterName]",
        "nodeCount": f"[int({steps}.nodeCount)]", "vmSize": f"[{steps}.vmSize]",
        "slotsPerNode": f"[int({steps}.slotsPerNode)]", "linuxImage": f"[{steps}.linuxImage]",
        "acceleratedNetworking": f"[{steps}.acceleratedNetworking]",
        "idleShutdownMinutes": f"[int({steps}.idleShutdownMinutes)]",
    }
    return {"$schema": UI_SCHEMA, "handler": "Microsoft.Azure.CreateUIDef", "version": "0.1.2-preview",
            "parameters": {"basics": basics, "outputs": outputs, "steps": [
                {"name": "cluster", "label": "Cluster", "subLabel": {"preValidation": "nodes and size",
                                                                     "postValidation": "done"},
                 "bladeTitle": "Cluster", "elements": elements}]}}


def azuredeploy_json(example: Path = EXAMPLE) -> str:
    """templates/arm/linux/azuredeploy.json from the example spec (or another example's template)."""
    return arm._text(azuredeploy(load_spec(example), example.name))


def create_ui_definition_json() -> str:
    """templates/arm/linux/createUiDefinition.json from the example spec."""
    return arm._text(create_ui_definition(load_spec(EXAMPLE)))
