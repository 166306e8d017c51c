"""The portal form (createUiDefinition.json) behind the Deploy-to-Azure button: one control per parameter."""

from __future__ import annotations

from typing import Any

from mpicloud.render import azure
from mpicloud.spec import ClusterSpec

SCHEMA = "https://schema.management.azure.com/schemas/0.1.2-preview/CreateUIDefinition.MultiVm.json#"
Json = dict[str, Any]


def _number(name: str, label: str, default: int, low: int, high: int, tip: str) -> Json:
    return {"name": name, "type": "Microsoft.Common.TextBox", "label": label, "defaultValue": str(default),
            "toolTip": tip, "constraints": {"required": True, "regex": r"^[0-9]{1,5}$",
                                            "validationMessage": f"a whole number from {low} to {high}"}}


def _basics() -> list[Json]:
    return [
        {"name": "adminUsername", "type": "Microsoft.Compute.UserNameTextBox", "label": "Administrator user name",
         "osPlatform": "Windows",
         "toolTip": "the same local administrator on every node (not 'admin' or 'administrator')",
         "constraints": {"required": True, "regex": "^[A-Za-z_][A-Za-z0-9_.-]{0,19}$",
                         "validationMessage": "1-20 letters, digits, '_', '.', '-', starting with a letter"}},
        {"name": "adminPassword", "type": "Microsoft.Compute.CredentialsCombo", "osPlatform": "Windows",
         "label": {"password": "Administrator password", "confirmPassword": "Confirm password"},
         "toolTip": {"password": "MS-MPI starts ranks with this password; SSH job submission uses it too"},
         "constraints": {"required": True, "customPasswordRegex": "^.{12,123}$",
                         "customValidationMessage": "12 to 123 characters"},
         "options": {"hideConfirmation": False}},
        {"name": "allowedSourceCidr", "type": "Microsoft.Common.TextBox", "label": "Allowed source network",
         "toolTip": "only this network may reach SSH (22) and RDP (3389), e.g. your IP as 203.0.113.7/32",
         "constraints": {"required": True, "regex": r"^[0-9]{1,3}(\.[0-9]{1,3}){3}/[0-9]{1,2}$",
                         "validationMessage": "an IPv4 network such as 203.0.113.7/32"}},
    ]


def _cluster(spec: ClusterSpec) -> list[Json]:
    options = spec.azure_options
    return [
        _number("nodeCount", "Nodes", spec.nodes, 1, 256, "number of Windows Server VMs; N0 is the head node"),
        {"name": "vmSize", "type": "Microsoft.Compute.SizeSelector", "label": "VM size", "osPlatform": "Windows",
         "toolTip": "size of every node", "recommendedSizes": [spec.size],
         "imageReference": {k: v for k, v in azure.image_reference(options.windows_version).items() if k != "version"},
         "count": "[steps('cluster').nodeCount]"},
        _number("slotsPerNode", "MPI ranks per node", spec.slots_per_node, 1, 1024, "usually the size's core count"),
        {"name": "windowsVersion", "type": "Microsoft.Common.DropDown", "label": "Windows Server version",
         "defaultValue": f"Windows Server {options.windows_version}", "toolTip": "the marketplace image",
         "constraints": {"allowedValues": [{"label": f"Windows Server {v}", "value": v}
                                           for v in sorted(azure.IMAGE_SKUS)]}},
        {"name": "acceleratedNetworking", "type": "Microsoft.Common.DropDown", "label": "Accelerated networking",
         "defaultValue": "On" if options.accelerated_networking else "Off",
         "toolTip": "needs a VM size that supports it",
         "constraints": {"allowedValues": [{"label": "On", "value": True}, {"label": "Off", "value": False}]}},
        _number("idleShutdownMinutes", "Idle shutdown (minutes)", round(spec.idle_shutdown_minutes or 0), 0, 10080,
                "deallocate every VM after this many minutes without jobs; 0 never"),
    ]


def create_ui_definition(spec: ClusterSpec) -> Json:
    """The createUiDefinition document; its outputs name every template parameter."""
    steps = "steps('cluster')"
    outputs = {
        "location": "[location()]", "adminUsername": "[basics('adminUsername')]",
        "adminPassword": "[basics('adminPassword').password]", "allowedSourceCidr": "[basics('allowedSourceCidr')]",
        "nodeCount": f"[int({steps}.nodeCount)]", "vmSize": f"[{steps}.vmSize]",
        "slotsPerNode": f"[int({steps}.slotsPerNode)]", "windowsVersion": f"[{steps}.windowsVersion]",
        "acceleratedNetworking": f"[{steps}.acceleratedNetworking]",
        "idleShutdownMinutes": f"[int({steps}.idleShutdownMinutes)]",
    }
    return {"$schema": SCHEMA, "handler": "Microsoft.Azure.CreateUIDef", "version": "0.1.2-preview",
            "parameters": {"basics": _basics(), "outputs": outputs, "steps": [
                {"name": "cluster", "label": "Cluster", "subLabel": {"preValidation": "nodes and size",
                                                                     "postValidation": "done"},
                 "bladeTitle": "Cluster", "elements": _cluster(spec)}]}}
