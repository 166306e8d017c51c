"""The ARM template (azuredeploy.json) and its portal form (createUiDefinition.json) for a Windows cluster."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

from mpicloud.render import azure, windows_bootstrap
from mpicloud.render.arm_ui import NUMBER_LIMITS, create_ui_definition
from mpicloud.render.azure import powershell
from mpicloud.spec import ClusterSpec, load_spec

SCHEMA = "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#"
#: the default source of the checked-in templates (a checkout's examples/, used by `make render`)
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "azure-windows.yaml"
PASSWORD_ENV = "MPICLOUD_ADMIN_PASSWORD"
PORTAL = "https://portal.azure.com/#create/Microsoft.Template/uri/"
NODE = "format('{0}-N{1}', parameters('clusterName'), copyIndex())"


def role_guid(key: str) -> str:
    """The deterministic name of one of the head node's custom roles (the same on every deployment)."""
    return f"guid(resourceGroup().id, parameters('clusterName'), '{key}-role')"


ROLE, ELASTIC_ROLE = role_guid("deallocate"), role_guid("elastic")
VNET, NSG, PPG = "variables('names').vnet", "variables('names').nsg", "variables('names').ppg"
Json = dict[str, Any]


def _p(name: str) -> str:
    return f"parameters('{name}')"


def _lit(text: str) -> str:
    """An ARM expression string literal."""
    return "'" + text.replace("'", "''") + "'"


def _rid(kind: str, *names: str) -> str:
    return f"resourceId('{kind}', {', '.join(names)})"


def _loop(name: str) -> Json:
    return {"name": name, "count": f"[{_p('nodeCount')}]"}


def _node(suffix: str = "", prefix: str = "N") -> str:
    return f"format('{{0}}-{prefix}{{1}}{suffix}', parameters('clusterName'), copyIndex())"


def _limits(name: str) -> Json:
    low, high = NUMBER_LIMITS[name]
    return {"minValue": low, "maxValue": high}


def parameters(spec: ClusterSpec) -> Json:
    """Template parameters; defaults come from the example spec."""
    def meta(text: str) -> Json:
        return {"metadata": {"description": text}}
    return {
        "location": {"type": "string", "defaultValue": "[resourceGroup().location]", **meta("Azure region")},
        "clusterName": {"type": "string", "defaultValue": spec.name, "minLength": 2, "maxLength": 32,
                        **meta("prefix of every resource name (lower-case letters, digits, '-'): two clusters "
                               "can share a resource group under different names")},
        "nodeCount": {"type": "int", "defaultValue": spec.node_count, **_limits("nodeCount"),
                      **meta("number of Windows Server VMs (N0 is the head node)")},
        "vmSize": {"type": "string", "defaultValue": spec.size, **meta("VM size of every node")},
        "slotsPerNode": {"type": "int", "defaultValue": spec.slots_per_node, **_limits("slotsPerNode"),
                         **meta("MPI ranks per node (usually the size's core count)")},
        "adminUsername": {"type": "string", "minLength": 1, "maxLength": 20,
                          **meta("administrator on every node (same password everywhere: MS-MPI needs it)")},
        "adminPassword": {"type": "securestring", "minLength": 12, "maxLength": 123,
                          **meta("administrator password (passed to the nodes in protected settings only)")},
        "adminSshPublicKey": {"type": "string", "defaultValue": "",
                              **meta("OpenSSH public key for the administrator (empty: password-only SSH)")},
        "sshKeyOnly": {"type": "bool", "defaultValue": False,
                       **meta("turn password logins over SSH off (needs adminSshPublicKey)")},
        "patchMode": {"type": "string", "defaultValue": spec.azure_options.patch_mode,
                      "allowedValues": list(azure.PATCH_MODES),
                      **meta("Windows Update: Manual never reboots a node in the middle of a job; the automatic "
                             "modes may")},
        "allowedSourceCidr": {"type": "string", "minLength": 9,
                              **meta("the only network allowed to reach SSH (22) and RDP (3389), e.g. 203.0.113.7/32")},
        "windowsVersion": {"type": "string", "defaultValue": spec.azure_options.windows_version,
                           "allowedValues": sorted(azure.IMAGE_SKUS), **meta("Windows Server version")},
        "acceleratedNetworking": {"type": "bool", "defaultValue": spec.azure_options.accelerated_networking,
                                  **meta("accelerated networking (the VM size must support it)")},
        "infiniBand": {"type": "bool", "defaultValue": spec.azure_options.rdma,
                       **meta("install the InfiniBand driver (HB, HC, HX and ND sizes with 'r' only); MS-MPI then "
                              "uses RDMA through NetworkDirect")},
        "idleShutdownMinutes": {"type": "int", "defaultValue": 0, **_limits("idleShutdownMinutes"),
                                **meta("deallocate every VM after this many idle minutes (0: never). Above 0 the "
                                       "deployment creates a custom role and role assignments, which needs "
                                       f"{azure.ROLE_ADMINS} on the resource group (Contributor is not enough)")},
    }


def variables(spec: ClusterSpec) -> Json:
    """Template variables: names, tags, image SKUs and the bootstrap script as userData (no secrets)."""
    names = {key: f"[format('{{0}}{value[len(spec.name):]}', parameters('clusterName'))]"
             for key, value in azure.resource_names(spec).items() if key in ("vnet", "nsg", "ppg")}
    tags = {**azure.tags(spec), "mpicloud-cluster": "[parameters('clusterName')]"}
    script = windows_bootstrap.bootstrap_ps1(spec)
    return {"names": names, "tags": tags, "imageSkus": dict(azure.IMAGE_SKUS),
            "bootstrapUserData": powershell.user_data(script),
            "subnetId": f"[{_rid('Microsoft.Network/virtualNetworks/subnets', VNET, _lit(azure.SUBNET_NAME))}]"}


def _base(kind: str, api: str, name: str) -> Json:
    return {"type": kind, "apiVersion": api, "name": name, "location": f"[{_p('location')}]",
            "tags": "[variables('tags')]"}


def network(spec: ClusterSpec) -> list[Json]:
    """NSG (SSH/RDP from the allowed CIDR only), VNet with the cluster subnet, one Standard static IP per node."""
    prefix = spec.target.platform.node_prefix
    rules = [{"name": r.name, "properties": {
        "description": r.description, "priority": r.priority, "direction": "Inbound", "access": "Allow",
        "protocol": "Tcp", "sourceAddressPrefix": f"[{_p('allowedSourceCidr')}]", "sourcePortRange": "*",
        "destinationAddressPrefix": "*", "destinationPortRange": str(r.port)}} for r in azure.inbound(spec)]
    nsg = {**_base("Microsoft.Network/networkSecurityGroups", azure.NETWORK_API, "[variables('names').nsg]"),
           "properties": {"securityRules": rules}}
    vnet = {**_base("Microsoft.Network/virtualNetworks", azure.NETWORK_API, "[variables('names').vnet]"),
            "dependsOn": [f"[{_rid('Microsoft.Network/networkSecurityGroups', NSG)}]"],
            "properties": {"addressSpace": {"addressPrefixes": [spec.azure_options.vnet_cidr]}, "subnets": [
                {"name": azure.SUBNET_NAME, "properties": {
                    "addressPrefix": spec.azure_options.subnet_cidr, "defaultOutboundAccess": False,
                    "networkSecurityGroup": {
                        "id": f"[{_rid('Microsoft.Network/networkSecurityGroups', NSG)}]"}}}]}}
    pip = {**_base("Microsoft.Network/publicIPAddresses", azure.NETWORK_API, f"[{_node('-ip', prefix)}]"),
           "copy": _loop("publicIps"), "sku": {"name": "Standard", "tier": "Regional"},
           "properties": {"publicIPAllocationMethod": "Static", "publicIPAddressVersion": "IPv4"}}
    nic = {**_base("Microsoft.Network/networkInterfaces", azure.NETWORK_API, f"[{_node('-nic', prefix)}]"),
           "copy": _loop("nics"),
           "dependsOn": [f"[{_rid('Microsoft.Network/virtualNetworks', VNET)}]",
                         f"[{_rid('Microsoft.Network/publicIPAddresses', _node('-ip', prefix))}]"],
           "properties": {"enableAcceleratedNetworking": f"[{_p('acceleratedNetworking')}]", "ipConfigurations": [
               {"name": "ipconfig", "properties": {
                   "privateIPAllocationMethod": "Dynamic", "subnet": {"id": "[variables('subnetId')]"},
                   "publicIPAddress": {
                       "id": f"[{_rid('Microsoft.Network/publicIPAddresses', _node('-ip', prefix))}]"}}}]}}
    return [nsg, vnet, pip, nic]


def _vm(spec: ClusterSpec) -> Json:
    nic = f"[{_rid('Microsoft.Network/networkInterfaces', _node('-nic'))}]"
    depends = [nic]
    props: Json = {
        "hardwareProfile": {"vmSize": f"[{_p('vmSize')}]"},
        "osProfile": {"computerName": "[format('N{0}', copyIndex())]", "adminUsername": f"[{_p('adminUsername')}]",
                      "adminPassword": f"[{_p('adminPassword')}]",
                      "windowsConfiguration": {
                          "provisionVMAgent": True,
                          "enableAutomaticUpdates": f"[not(equals({_p('patchMode')}, 'Manual'))]",
                          "patchSettings": {"patchMode": f"[{_p('patchMode')}]"}}},
        "userData": "[variables('bootstrapUserData')]",
        "storageProfile": {
            "imageReference": {**azure.image_reference(spec.azure_options.windows_version),
                               "sku": f"[variables('imageSkus')[{_p('windowsVersion')}]]"},
            "osDisk": {"createOption": "FromImage", "deleteOption": "Delete",
                       "managedDisk": {"storageAccountType": f"[{azure.os_disk_type_expression(_p('vmSize'))}]"}}},
        "networkProfile": {"networkInterfaces": [
            {"id": nic, "properties": {"deleteOption": "Delete"}}]},
        "diagnosticsProfile": {"bootDiagnostics": {"enabled": True}},
    }
    if spec.azure_options.proximity_placement_group:
        ppg = f"[{_rid('Microsoft.Compute/proximityPlacementGroups', PPG)}]"
        props["proximityPlacementGroup"] = {"id": ppg}
        depends.append(ppg)
    return {**_base("Microsoft.Compute/virtualMachines", azure.COMPUTE_API, f"[{NODE}]"), "copy": _loop("vms"),
            "dependsOn": depends, "properties": props,
            # the head's identity: deallocation when idle (role below), the customer's Blob container (blob-access.json)
            "identity": {"type": "[if(equals(copyIndex(), 0), 'SystemAssigned', 'None')]"}}


def _command(script: str) -> str:
    key = _p("adminSshPublicKey")
    values = {"NodeIndex": "string(copyIndex())", "NodeCount": f"string({_p('nodeCount')})",
              "SlotsPerNode": f"string({_p('slotsPerNode')})", "IdleMinutes": f"string({_p('idleShutdownMinutes')})",
              "ArmEndpoint": "environment().resourceManager", "AdminUserB64": f"base64({_p('adminUsername')})",
              "VmPrefixB64": f"base64({_p('clusterName')})",
              "AdminKeyB64": f"if(empty({key}), {_lit(powershell.NO_KEY)}, base64({key}))",
              "PasswordSsh": f"if({_p('sshKeyOnly')}, '0', '1')"}
    pieces = powershell.command_pieces(values, script)
    return "[concat(" + ", ".join(_lit(t) if literal else t for literal, t in pieces) + ")]"


def _role(key: str, what: str, actions: tuple[str, ...], condition: str | None) -> Json:
    """A custom role of the head node's identity (`key` makes its deterministic name): `actions`, nothing else;
    assignable in the resource group (custom roles take no narrower assignable scope), assigned per VM."""
    name = role_guid(key)
    return {"type": "Microsoft.Authorization/roleDefinitions", "apiVersion": azure.AUTHORIZATION_API,
            "name": f"[{name}]", **({"condition": condition} if condition else {}),
            "properties": {
                "roleName": f"[format('mpicloud {key} {{0}} ({{1}})', {_p('clusterName')}, {name})]",
                "description": f"mpicloud {what}", "type": "CustomRole", "assignableScopes": ["[resourceGroup().id]"],
                "permissions": [{"actions": list(actions)}]}}


def _head_assignments(spec: ClusterSpec, key: str, what: str, condition: str | None, first: int) -> Json:
    """The head node's role `key` assigned on each VM from node `first` on, one assignment per VM (its scope)."""
    prefix = spec.target.platform.node_prefix
    index = f"add(copyIndex(), {first})" if first else "copyIndex()"
    node = f"format('{{0}}-{prefix}{{1}}', {_p('clusterName')}, {index})"
    head = _rid("Microsoft.Compute/virtualMachines", f"format('{{0}}-{prefix}0', {_p('clusterName')})")
    role = role_guid(key)
    count = f"[sub({_p('nodeCount')}, {first})]" if first else f"[{_p('nodeCount')}]"
    return {"type": "Microsoft.Authorization/roleAssignments", "apiVersion": azure.AUTHORIZATION_API,
            "name": f"[guid(resourceGroup().id, {_p('clusterName')}, {node}, '{key}')]",
            **({"condition": condition} if condition else {}), "copy": {"name": f"{key}Roles", "count": count},
            "scope": f"[format('Microsoft.Compute/virtualMachines/{{0}}-{prefix}{{1}}', {_p('clusterName')}, {index})]",
            "dependsOn": [f"[{_rid('Microsoft.Compute/virtualMachines', node)}]", f"[{head}]",
                          f"[{_rid('Microsoft.Authorization/roleDefinitions', role)}]"],
            "properties": {
                "roleDefinitionId": f"[subscriptionResourceId('Microsoft.Authorization/roleDefinitions', {role})]",
                "principalId": f"[reference({head}, '{azure.COMPUTE_API}', 'full').identity.principalId]",
                "principalType": "ServicePrincipal", "description": f"mpicloud: {what}"}}


def placement(spec: ClusterSpec) -> list[Json]:
    """The proximity placement group, when the spec asks for one."""
    if not spec.azure_options.proximity_placement_group:
        return []
    return [{**_base("Microsoft.Compute/proximityPlacementGroups", azure.COMPUTE_API, "[variables('names').ppg]"),
             "properties": {"proximityPlacementGroupType": "Standard"}}]


def deallocate(spec: ClusterSpec) -> list[Json]:
    """The head node's permission to deallocate every VM (idle shutdown): the custom role and one assignment per
    VM, only when idleShutdownMinutes > 0."""
    condition = f"[greater({_p('idleShutdownMinutes')}, 0)]"
    return [_role("deallocate", "idle shutdown: the head node may read and deallocate the cluster's VMs",
                  azure.DEALLOCATE_ACTIONS, condition),
            _head_assignments(spec, "deallocate", "the head node deallocates the cluster when idle", condition, 0)]


def elastic(spec: ClusterSpec) -> list[Json]:
    """An elastic cluster's head starts and deallocates its compute VMs (provision/runner/azure_nodes.py): a custom
    role with exactly azure.ELASTIC_ACTIONS, assigned on each compute VM (node 1 on) and on nothing else."""
    if spec.elastic is None:
        return []
    return [_role("elastic", "elastic pool: the head node may read, start and deallocate the compute VMs",
                  azure.ELASTIC_ACTIONS, None),
            _head_assignments(spec, "elastic", "the head node starts and deallocates compute VMs with the queue",
                              None, 1)]


def compute(spec: ClusterSpec) -> list[Json]:
    """Optional PPG, the VMs, the bootstrap extension per VM and the head node's deallocate permission."""
    script = windows_bootstrap.bootstrap_ps1(spec)
    extension = {**_base("Microsoft.Compute/virtualMachines/extensions", azure.COMPUTE_API,
                         f"[format('{{0}}-N{{1}}/{azure.EXTENSION_NAME}', {_p('clusterName')}, copyIndex())]"),
                 "copy": _loop("bootstraps"),
                 "dependsOn": [f"[{_rid('Microsoft.Compute/virtualMachines', NODE)}]"],
                 "properties": {**azure.EXTENSION, "autoUpgradeMinorVersion": True,
                                "forceUpdateTag": powershell.force_update_tag(script),
                                "settings": {"timestamp": powershell.script_version(script)},
                                "protectedSettings": {"commandToExecute": _command(script),
                                                      powershell.PASSWORD_SETTING: f"[{_p('adminPassword')}]"}}}
    infiniband = {**_base("Microsoft.Compute/virtualMachines/extensions", azure.COMPUTE_API,
                          f"[format('{{0}}-N{{1}}/{azure.INFINIBAND_NAME}', {_p('clusterName')}, copyIndex())]"),
                  "condition": f"[{_p('infiniBand')}]", "copy": _loop("infiniband"),
                  "dependsOn": [f"[{_rid('Microsoft.Compute/virtualMachines', NODE)}]"],
                  "properties": {**azure.INFINIBAND_WINDOWS, "autoUpgradeMinorVersion": True, "settings": {}}}
    return [*placement(spec), _vm(spec), extension, infiniband, *deallocate(spec), *elastic(spec)]


def outputs(spec: ClusterSpec) -> Json:
    """Addresses and how to connect, for the spec's OS (nodes named by its target); never a secret: a Windows
    attach line names the environment variable of the password."""
    prefix = spec.target.platform.node_prefix
    head_ip = f"format('{{0}}-{prefix}0-ip', {_p('clusterName')})"
    head = f"format('{{0}}-{prefix}0', {_p('clusterName')})"
    ip = f"reference({_rid('Microsoft.Network/publicIPAddresses', head_ip)}).ipAddress"
    nic = f"reference({_rid('Microsoft.Network/networkInterfaces', _node('-nic', prefix))})"
    user = _p("adminUsername")
    attach = _lit(spec.target.attach_command("{0}", "{1}", "{2}", "{3}",
                                             PASSWORD_ENV if spec.os == "windows" else None))
    return {
        "publicIps": {"type": "array", "copy": {"count": f"[{_p('nodeCount')}]", "input":
                      f"[reference({_rid('Microsoft.Network/publicIPAddresses', _node('-ip', prefix))}).ipAddress]"}},
        "privateIps": {"type": "array", "copy": {"count": f"[{_p('nodeCount')}]",
                                                 "input": f"[{nic}.ipConfigurations[0].properties.privateIPAddress]"}},
        "adminUsername": {"type": "string", "value": f"[{user}]"},
        # the customer's blob-access.json grants this identity its container (docs/bucket-access.md)
        "headPrincipalId": {"type": "string", "value": f"[reference({_rid('Microsoft.Compute/virtualMachines', head)}, "
                                                       f"'{azure.COMPUTE_API}', 'full').identity.principalId]"},
        "sshCommand": {"type": "string", "value": f"[concat('ssh ', {user}, '@', {ip})]"},
        "attachCommand": {"type": "string", "value": f"[format({attach}, {_p('clusterName')}, {ip}, {user}, "
                                                     f"{_p('slotsPerNode')})]"},
    }


def elastic_note(spec: ClusterSpec) -> str:
    """What the template description says of an elastic cluster ("" for a fixed one)."""
    if spec.elastic is None:
        return ""
    return (f"Elastic: nodeCount VMs are created (the head and {spec.elastic.max} compute nodes); the head's runner "
            f"deallocates idle compute VMs and starts them for queued jobs (min {spec.elastic.min}) with a custom "
            f"role on the compute VMs, which needs {azure.ROLE_ADMINS}.")


def azuredeploy(spec: ClusterSpec, source: str = EXAMPLE.name) -> Json:
    """The whole deployment template (classic array-form resources, copy loops, no secrets); `source`: the spec
    file named in its description."""
    return {"$schema": SCHEMA, "contentVersion": "1.0.0.0",
            "metadata": {"description": (
                f"mpicloud Windows MS-MPI cluster (generated from {source}). " + (elastic_note(spec) or (
                    "A Contributor can deploy it with idleShutdownMinutes 0 (the default); idle shutdown creates a "
                    f"custom role and role assignments, which needs {azure.ROLE_ADMINS}.")))},
            "parameters": parameters(spec), "variables": variables(spec),
            "resources": [*network(spec), *compute(spec)], "outputs": outputs(spec)}


def _text(doc: Json) -> str:
    return json.dumps(doc, sort_keys=True, indent=2) + "\n"


def azuredeploy_json(example: Path = EXAMPLE) -> str:
    """templates/arm/azuredeploy.json from the example spec (or another example's template)."""
    return _text(azuredeploy(load_spec(example), example.name))


def create_ui_definition_json() -> str:
    """templates/arm/createUiDefinition.json from the example spec."""
    return _text(create_ui_definition(load_spec(EXAMPLE)))


def deploy_button_url(raw_base: str, folder: str = "templates/arm") -> str:
    """The Deploy-to-Azure link for templates published under `raw_base` (e.g. a raw.githubusercontent.com URL);
    `folder`: templates/arm (Windows) or templates/arm/linux."""
    base = f"{raw_base.rstrip('/')}/{folder.strip('/')}"
    template = quote(f"{base}/azuredeploy.json", safe="")
    form = quote(f"{base}/createUiDefinition.json", safe="")
    return f"{PORTAL}{template}/createUIDefinitionUri/{form}"
