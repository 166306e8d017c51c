"""The ARM template (azuredeploy.json) and its portal form (createUiDefinition.json) for a Windows cluster."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

from mpicloud.render import azure, windows
from mpicloud.render.arm_ui import create_ui_definition
from mpicloud.spec import ClusterSpec, load_spec

SCHEMA = "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#"
#: the default source of the checked-in templates (a checkout's examples/, used by `make render`)
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "azure-windows.yaml"
PASSWORD_ENV = "MPICLOUD_ADMIN_PASSWORD"
PORTAL = "https://portal.azure.com/#create/Microsoft.Template/uri/"
NODE = "format('N{0}', copyIndex())"
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


def _node(suffix: str = "") -> str:
    return f"format('N{{0}}{suffix}', copyIndex())"


def parameters(spec: ClusterSpec) -> Json:
    """Template parameters; defaults come from the example spec."""
    def meta(text: str) -> Json:
        return {"metadata": {"description": text}}
    return {
        "location": {"type": "string", "defaultValue": "[resourceGroup().location]", **meta("Azure region")},
        "nodeCount": {"type": "int", "defaultValue": spec.nodes, "minValue": 1, "maxValue": 256,
                      **meta("number of Windows Server VMs (N0 is the head node)")},
        "vmSize": {"type": "string", "defaultValue": spec.size, **meta("VM size of every node")},
        "slotsPerNode": {"type": "int", "defaultValue": spec.slots_per_node, "minValue": 1, "maxValue": 1024,
                         **meta("MPI ranks per node (usually the size's core count)")},
        "adminUsername": {"type": "string", "minLength": 1, "maxLength": 20,
                          **meta("administrator on every node (same password everywhere: MS-MPI needs it)")},
        "adminPassword": {"type": "securestring", "minLength": 12, "maxLength": 123,
                          **meta("administrator password (passed to the nodes in protected settings only)")},
        "allowedSourceCidr": {"type": "string", "minLength": 9,
                              **meta("the only network allowed to reach SSH (22) and RDP (3389), e.g. 203.0.113.7/32")},
        "windowsVersion": {"type": "string", "defaultValue": spec.azure_options.windows_version,
                           "allowedValues": sorted(azure.IMAGE_SKUS), **meta("Windows Server version")},
        "acceleratedNetworking": {"type": "bool", "defaultValue": spec.azure_options.accelerated_networking,
                                  **meta("accelerated networking (the VM size must support it)")},
        "idleShutdownMinutes": {"type": "int", "defaultValue": round(spec.idle_shutdown_minutes or 0),
                                "minValue": 0, "maxValue": 10080,
                                **meta("deallocate every VM after this many idle minutes (0: never)")},
    }


def variables(spec: ClusterSpec) -> Json:
    """Template variables: names, tags, image SKUs and the bootstrap script text (no secrets)."""
    return {"names": azure.resource_names(spec), "tags": azure.tags(spec), "imageSkus": dict(azure.IMAGE_SKUS),
            "bootstrap": windows.bootstrap_ps1(spec),
            "subnetId": f"[{_rid('Microsoft.Network/virtualNetworks/subnets', VNET, _lit(azure.SUBNET_NAME))}]"}


def _base(kind: str, api: str, name: str) -> Json:
    return {"type": kind, "apiVersion": api, "name": name, "location": f"[{_p('location')}]",
            "tags": "[variables('tags')]"}


def network(spec: ClusterSpec) -> list[Json]:
    """NSG (SSH/RDP from the allowed CIDR only), VNet with the cluster subnet, one Standard static IP per node."""
    rules = [{"name": r.name, "properties": {
        "description": r.description, "priority": r.priority, "direction": "Inbound", "access": "Allow",
        "protocol": "Tcp", "sourceAddressPrefix": f"[{_p('allowedSourceCidr')}]", "sourcePortRange": "*",
        "destinationAddressPrefix": "*", "destinationPortRange": str(r.port)}} for r in azure.INBOUND]
    nsg = {**_base("Microsoft.Network/networkSecurityGroups", azure.NETWORK_API, "[variables('names').nsg]"),
           "properties": {"securityRules": rules}}
    vnet = {**_base("Microsoft.Network/virtualNetworks", azure.NETWORK_API, "[variables('names').vnet]"),
            "dependsOn": [f"[{_rid('Microsoft.Network/networkSecurityGroups', NSG)}]"],
            "properties": {"addressSpace": {"addressPrefixes": [spec.azure_options.vnet_cidr]}, "subnets": [
                {"name": azure.SUBNET_NAME, "properties": {
                    "addressPrefix": spec.azure_options.subnet_cidr, "defaultOutboundAccess": False,
                    "networkSecurityGroup": {
                        "id": f"[{_rid('Microsoft.Network/networkSecurityGroups', NSG)}]"}}}]}}
    pip = {**_base("Microsoft.Network/publicIPAddresses", azure.NETWORK_API, f"[{_node('-ip')}]"),
           "copy": _loop("publicIps"), "sku": {"name": "Standard", "tier": "Regional"},
           "properties": {"publicIPAllocationMethod": "Static", "publicIPAddressVersion": "IPv4"}}
    nic = {**_base("Microsoft.Network/networkInterfaces", azure.NETWORK_API, f"[{_node('-nic')}]"),
           "copy": _loop("nics"),
           "dependsOn": [f"[{_rid('Microsoft.Network/virtualNetworks', VNET)}]",
                         f"[{_rid('Microsoft.Network/publicIPAddresses', _node('-ip'))}]"],
           "properties": {"enableAcceleratedNetworking": f"[{_p('acceleratedNetworking')}]", "ipConfigurations": [
               {"name": "ipconfig", "properties": {
                   "privateIPAllocationMethod": "Dynamic", "subnet": {"id": "[variables('subnetId')]"},
                   "publicIPAddress": {"id": f"[{_rid('Microsoft.Network/publicIPAddresses', _node('-ip'))}]"}}}]}}
    return [nsg, vnet, pip, nic]


def _vm(spec: ClusterSpec) -> Json:
    nic = f"[{_rid('Microsoft.Network/networkInterfaces', _node('-nic'))}]"
    depends = [nic]
    props: Json = {
        "hardwareProfile": {"vmSize": f"[{_p('vmSize')}]"},
        "osProfile": {"computerName": f"[{NODE}]", "adminUsername": f"[{_p('adminUsername')}]",
                      "adminPassword": f"[{_p('adminPassword')}]", "customData": "[base64(variables('bootstrap'))]",
                      "windowsConfiguration": {"provisionVMAgent": True, "enableAutomaticUpdates": True}},
        "storageProfile": {
            "imageReference": {**azure.image_reference(spec.azure_options.windows_version),
                               "sku": f"[variables('imageSkus')[{_p('windowsVersion')}]]"},
            "osDisk": {"createOption": "FromImage", "deleteOption": "Delete",
                       "managedDisk": {"storageAccountType": azure.OS_DISK_TYPE}}},
        "networkProfile": {"networkInterfaces": [
            {"id": nic, "properties": {"deleteOption": "Delete"}}]},
        "diagnosticsProfile": {"bootDiagnostics": {"enabled": True}},
    }
    if spec.azure_options.proximity_placement_group:
        ppg = f"[{_rid('Microsoft.Compute/proximityPlacementGroups', PPG)}]"
        props["proximityPlacementGroup"] = {"id": ppg}
        depends.append(ppg)
    return {**_base("Microsoft.Compute/virtualMachines", azure.COMPUTE_API, f"[{NODE}]"), "copy": _loop("vms"),
            "dependsOn": depends, "identity": {"type": "SystemAssigned"}, "properties": props}


def _command() -> str:
    values = {"NodeIndex": "string(copyIndex())", "NodeCount": f"string({_p('nodeCount')})",
              "SlotsPerNode": f"string({_p('slotsPerNode')})", "IdleMinutes": f"string({_p('idleShutdownMinutes')})",
              "ArmEndpoint": "environment().resourceManager", "AdminUserB64": f"base64({_p('adminUsername')})",
              "AdminPasswordB64": f"base64({_p('adminPassword')})"}
    pieces = windows.command_pieces(values)
    return "[concat(" + ", ".join(_lit(t) if literal else t for literal, t in pieces) + ")]"


def compute(spec: ClusterSpec) -> list[Json]:
    """Optional PPG, the VMs, the bootstrap extension per VM and the head node's deallocate permission."""
    out: list[Json] = []
    if spec.azure_options.proximity_placement_group:
        out.append({**_base("Microsoft.Compute/proximityPlacementGroups", azure.COMPUTE_API,
                            "[variables('names').ppg]"), "properties": {"proximityPlacementGroupType": "Standard"}})
    extension = {**_base("Microsoft.Compute/virtualMachines/extensions", azure.COMPUTE_API,
                         f"[format('N{{0}}/{azure.EXTENSION_NAME}', copyIndex())]"),
                 "copy": _loop("bootstraps"),
                 "dependsOn": [f"[{_rid('Microsoft.Compute/virtualMachines', NODE)}]"],
                 "properties": {**azure.EXTENSION, "autoUpgradeMinorVersion": True,
                                "settings": {"timestamp": windows.script_version(windows.bootstrap_ps1(spec))},
                                "protectedSettings": {"commandToExecute": _command()}}}
    head = _rid("Microsoft.Compute/virtualMachines", _lit("N0"))
    role = {"type": "Microsoft.Authorization/roleAssignments", "apiVersion": azure.AUTHORIZATION_API,
            "name": f"[guid(resourceGroup().id, {_lit(spec.name)}, {NODE}, 'deallocate')]",
            "condition": f"[greater({_p('idleShutdownMinutes')}, 0)]", "copy": _loop("deallocateRoles"),
            "scope": "[format('Microsoft.Compute/virtualMachines/N{0}', copyIndex())]",
            "dependsOn": [f"[{_rid('Microsoft.Compute/virtualMachines', NODE)}]", f"[{head}]"],
            "properties": {
                "roleDefinitionId": f"[subscriptionResourceId('Microsoft.Authorization/roleDefinitions', "
                                    f"{_lit(azure.VM_CONTRIBUTOR_ROLE)})]",
                "principalId": f"[reference({head}, '{azure.COMPUTE_API}', 'full').identity.principalId]",
                "principalType": "ServicePrincipal",
                "description": "mpicloud: the head node deallocates the cluster when idle"}}
    return [*out, _vm(spec), extension, role]


def outputs(spec: ClusterSpec) -> Json:
    """Addresses and how to connect; never a secret."""
    ip = f"reference({_rid('Microsoft.Network/publicIPAddresses', _lit('N0-ip'))}).ipAddress"
    nic = f"reference({_rid('Microsoft.Network/networkInterfaces', _node('-nic'))})"
    user = _p("adminUsername")
    return {
        "publicIps": {"type": "array", "copy": {"count": f"[{_p('nodeCount')}]", "input":
                      f"[reference({_rid('Microsoft.Network/publicIPAddresses', _node('-ip'))}).ipAddress]"}},
        "privateIps": {"type": "array", "copy": {"count": f"[{_p('nodeCount')}]",
                                                 "input": f"[{nic}.ipConfigurations[0].properties.privateIPAddress]"}},
        "adminUsername": {"type": "string", "value": f"[{user}]"},
        "sshCommand": {"type": "string", "value": f"[concat('ssh ', {user}, '@', {ip})]"},
        "attachCommand": {"type": "string", "value": (
            f"[concat('mpicloud attach ', {_lit(spec.name)}, ' --host ', {ip}, ' --user ', {user}, "
            f"' --password-env {PASSWORD_ENV} --os windows')]")},
    }


def azuredeploy(spec: ClusterSpec) -> Json:
    """The whole deployment template (classic array-form resources, copy loops, no secrets)."""
    return {"$schema": SCHEMA, "contentVersion": "1.0.0.0",
            "metadata": {"description": f"mpicloud Windows MS-MPI cluster (generated from {EXAMPLE.name})"},
            "parameters": parameters(spec), "variables": variables(spec),
            "resources": [*network(spec), *compute(spec)], "outputs": outputs(spec)}


def _text(doc: Json) -> str:
    return json.dumps(doc, sort_keys=True, indent=2) + "\n"


def azuredeploy_json() -> str:
    """templates/arm/azuredeploy.json from the example spec."""
    return _text(azuredeploy(load_spec(EXAMPLE)))


def create_ui_definition_json() -> str:
    """templates/arm/createUiDefinition.json from the example spec."""
    return _text(create_ui_definition(load_spec(EXAMPLE)))


def deploy_button_url(raw_base: str) -> str:
    """The Deploy-to-Azure link for templates published under `raw_base` (e.g. a raw.githubusercontent.com URL)."""
    base = raw_base.rstrip("/")
    template = quote(f"{base}/templates/arm/azuredeploy.json", safe="")
    form = quote(f"{base}/templates/arm/createUiDefinition.json", safe="")
    return f"{PORTAL}{template}/createUIDefinitionUri/{form}"
