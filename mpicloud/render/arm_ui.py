"""The portal form (createUiDefinition.json) behind the Deploy-to-Azure button: one control per parameter."""

from __future__ import annotations

from typing import Any

from mpicloud.render import azure
from mpicloud.spec import ClusterSpec

SCHEMA = "https://schema.management.azure.com/schemas/0.1.2-preview/CreateUIDefinition.MultiVm.json#"
Json = dict[str, Any]


def _number(name: str, label: str, default: int, low: int, high: int, tip: str) -> Json:
    """A whole-number box that accepts exactly the template parameter's minValue..maxValue (NUMBER_LIMITS)."""
    value = f"int(steps('cluster').{name})"
    return {"name": name, "type": "Microsoft.Common.TextBox", "label": label, "defaultValue": str(default),
            "toolTip": tip, "constraints": {"required": True, "validations": [
                {"regex": "^[0-9]{1,5}$", "message": "a whole number"},
                {"isValid": f"[and(greaterOrEquals({value}, {low}), lessOrEquals({value}, {high}))]",
                 "message": f"a whole number from {low} to {high}"}]}}


#: bounds of the numeric controls; the template's minValue/maxValue must be the same (tested)
NUMBER_LIMITS = {"nodeCount": (1, 256), "slotsPerNode": (1, 1024), "idleShutdownMinutes": (0, 10080)}


def _dropdown(name: str, label: str, default: str, values: list[tuple[str, Any]], tip: str) -> Json:
    return {"name": name, "type": "Microsoft.Common.DropDown", "label": label, "defaultValue": default,
            "toolTip": tip, "constraints": {"allowedValues": [{"label": k, "value": v} for k, v in values]}}


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
        {"name": "adminSshPublicKey", "type": "Microsoft.Common.TextBox", "label": "Administrator SSH public key",
         "toolTip": "optional OpenSSH public key (ssh-ed25519 ...); empty: SSH logins use the password",
         "constraints": {"required": False, "regex": "^$|^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp[0-9]+) [A-Za-z0-9+/=]+",
                         "validationMessage": "an OpenSSH public key line, or empty"}},
        {"name": "allowedSourceCidr", "type": "Microsoft.Common.TextBox", "label": "Allowed source network",
         "toolTip": "only this network may reach SSH (22) and RDP (3389), e.g. your IP as 203.0.113.7/32",
         "constraints": {"required": True, "regex": r"^[0-9]{1,3}(\.[0-9]{1,3}){3}/[0-9]{1,2}$",
                         "validationMessage": "an IPv4 network such as 203.0.113.7/32"}},
    ]


def _cluster(spec: ClusterSpec) -> list[Json]:
    options = spec.azure_options
    lim = NUMBER_LIMITS
    return [
        {"name": "clusterName", "type": "Microsoft.Common.TextBox", "label": "Cluster name",
         "defaultValue": spec.name, "toolTip": "prefix of every resource name; two clusters may share a group",
         "constraints": {"required": True, "regex": "^[a-z][a-z0-9-]{0,30}[a-z0-9]$",
                         "validationMessage": "2-32 lower-case letters, digits and '-', starting with a letter"}},
        _number("nodeCount", "Nodes", spec.node_count, *lim["nodeCount"],
                "number of Windows Server VMs; N0 is the head"),
        {"name": "vmSize", "type": "Microsoft.Compute.SizeSelector", "label": "VM size", "osPlatform": "Windows",
         "toolTip": "size of every node", "recommendedSizes": [spec.size],
         "imageReference": {k: v for k, v in azure.image_reference(options.windows_version).items() if k != "version"},
         "count": "[steps('cluster').nodeCount]"},
        _number("slotsPerNode", "MPI ranks per node", spec.slots_per_node, *lim["slotsPerNode"],
                "usually the size's core count"),
        _dropdown("windowsVersion", "Windows Server version", f"Windows Server {options.windows_version}",
                  [(f"Windows Server {v}", v) for v in sorted(azure.IMAGE_SKUS)], "the marketplace image"),
        _dropdown("acceleratedNetworking", "Accelerated networking", "On" if options.accelerated_networking else "Off",
                  [("On", True), ("Off", False)], "needs a VM size that supports it"),
        _dropdown("infiniBand", "InfiniBand", "On" if options.rdma else "Off", [("On", True), ("Off", False)],
                  "the InfiniBand driver for MS-MPI over RDMA: HB, HC, HX and ND sizes with 'r' only"),
        _dropdown("sshKeyOnly", "SSH logins", "Key or password", [("Key or password", False), ("Key only", True)],
                  "Key only needs the administrator SSH public key"),
        _dropdown("patchMode", "Windows Update", options.patch_mode, [(m, m) for m in azure.PATCH_MODES],
                  "Manual never reboots a node in the middle of a job"),
        _number("idleShutdownMinutes", "Idle shutdown (minutes)", 0, *lim["idleShutdownMinutes"],
                f"deallocate every VM after this many minutes without jobs; 0 never. Above 0 you need "
                f"{azure.ROLE_ADMINS} (a custom role and role assignments are created)"),
    ]


def create_ui_definition(spec: ClusterSpec) -> Json:
    """The createUiDefinition document; its outputs name every template parameter."""
    steps = "steps('cluster')"
    outputs = {
        "location": "[location()]", "adminUsername": "[basics('adminUsername')]",
        "adminSshPublicKey": "[basics('adminSshPublicKey')]", "clusterName": f"[{steps}.clusterName]",
        "sshKeyOnly": f"[{steps}.sshKeyOnly]", "patchMode": f"[{steps}.patchMode]",
        "adminPassword": "[basics('adminPassword').password]", "allowedSourceCidr": "[basics('allowedSourceCidr')]",
        "nodeCount": f"[int({steps}.nodeCount)]", "vmSize": f"[{steps}.vmSize]",
        "slotsPerNode": f"[int({steps}.slotsPerNode)]", "windowsVersion": f"[{steps}.windowsVersion]",
        "acceleratedNetworking": f"[{steps}.acceleratedNetworking]", "infiniBand": f"[{steps}.infiniBand]",
        "idleShutdownMinutes": f"[int({steps}.idleShutdownMinutes)]",
    }
    return {"$schema": SCHEMA, "handler": "Microsoft.Azure.CreateUIDef", "version": "0.1.2-preview",
            "parameters": {"basics": _basics(), "outputs": outputs, "steps": [
                {"name": "cluster", "label": "Cluster", "subLabel": {"preValidation": "nodes and size",
                                                                     "postValidation": "done"},
                 "bladeTitle": "Cluster", "elements": _cluster(spec)}]}}
