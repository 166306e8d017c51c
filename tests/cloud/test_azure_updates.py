"""What a real Azure deployment and every redeploy need from the ARM template and its form (issue 11, items 1-6):
no password on a command line, a bootstrap that updates in place and reruns, a least-privilege idle-shutdown role
on N0 only, the SSH key, patch mode, an OS disk that fits the size, form limits = template limits, prefixed names."""

from __future__ import annotations

import base64
import gzip
import json
import re
from typing import Any

import pytest

from mpicloud.render import arm, arm_ui, azure, windows_bootstrap
from mpicloud.render.azure import powershell
from mpicloud.spec import ClusterSpec, spec_from_dict

#: a recognisable password: none of its forms may appear anywhere but the protected setting
PASSWORD = "Recognisable-Pw-7319!"


def _forms(password: str) -> list[str]:
    return [password, base64.b64encode(password.encode()).decode(),
            base64.b64encode(password.encode("utf-16-le")).decode()]


@pytest.fixture(scope="module")
def template(azure_spec: ClusterSpec) -> dict[str, Any]:
    return arm.azuredeploy(azure_spec)


def _res(template: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(r for r in template["resources"] if r["type"] == kind)


def test_password_parameter_reaches_only_the_protected_setting(template: dict[str, Any]) -> None:
    ext = _res(template, "Microsoft.Compute/virtualMachines/extensions")
    command = ext["properties"]["protectedSettings"]["commandToExecute"]
    assert "adminPassword" not in command and "Password" not in command.replace("-PasswordSsh", "")
    text = json.dumps(template)
    # the password parameter is used by osProfile.adminPassword and the protected setting, nowhere else
    assert text.count("parameters('adminPassword')") == 2
    assert _res(template, "Microsoft.Compute/virtualMachines")["properties"]["osProfile"]["adminPassword"] == \
        "[parameters('adminPassword')]"


def test_no_form_of_a_real_password_in_the_rendered_command(azure_spec: ClusterSpec) -> None:
    script = windows_bootstrap.bootstrap_ps1(azure_spec)
    values = {"NodeIndex": "0", "NodeCount": "2", "SlotsPerNode": "4", "IdleMinutes": "0", "ArmEndpoint": "x",
              "AdminUserB64": powershell.b64("mpiadmin"), "VmPrefixB64": powershell.b64("c"), "AdminKeyB64": "none",
              "PasswordSsh": "1"}
    rendered = powershell.bootstrap_command(values, script) + json.dumps(arm.azuredeploy(azure_spec))
    assert not [form for form in _forms(PASSWORD) if form in rendered]


def _script(template: dict[str, Any]) -> str:
    """The bootstrap script a template's VMs get (gzip + base64 userData)."""
    return gzip.decompress(base64.b64decode(template["variables"]["bootstrapUserData"])).decode("ascii")


def test_bootstrap_is_user_data_and_reruns_when_it_changes(azure_spec: ClusterSpec) -> None:
    first = arm.azuredeploy(azure_spec)
    changed = arm.azuredeploy(spec_from_dict({**azure_spec.model_dump(mode="json", exclude_none=True),
                                              "slots_per_node": 16}))
    vm = _res(first, "Microsoft.Compute/virtualMachines")["properties"]
    assert vm["userData"] == "[variables('bootstrapUserData')]" and "customData" not in vm["osProfile"]
    ext1, ext2 = (_res(t, "Microsoft.Compute/virtualMachines/extensions")["properties"] for t in (first, changed))
    assert ext1["forceUpdateTag"] == powershell.force_update_tag(_script(first))
    assert ext1["forceUpdateTag"] != ext2["forceUpdateTag"]
    # the command only runs the userData whose hash it names (IMDS may still serve the previous script)
    assert windows_bootstrap.script_sha256(_script(changed)) in ext2["protectedSettings"]["commandToExecute"]
    assert windows_bootstrap.script_sha256(_script(first)) not in ext2["protectedSettings"]["commandToExecute"]


def test_idle_shutdown_role_is_custom_minimal_and_opt_in(template: dict[str, Any]) -> None:
    role = _res(template, "Microsoft.Authorization/roleDefinitions")
    assert role["properties"]["permissions"] == [{"actions": ["Microsoft.Compute/virtualMachines/read",
                                                              "Microsoft.Compute/virtualMachines/deallocate/action"]}]
    assert role["properties"]["assignableScopes"] == ["[resourceGroup().id]"]
    assignment = _res(template, "Microsoft.Authorization/roleAssignments")
    assert assignment["properties"]["roleDefinitionId"] == (
        f"[subscriptionResourceId('Microsoft.Authorization/roleDefinitions', {arm.ROLE})]")
    assert "9980e02c" not in json.dumps(template)  # never "Virtual Machine Contributor"
    assert role["condition"] == assignment["condition"] == "[greater(parameters('idleShutdownMinutes'), 0)]"
    assert template["parameters"]["idleShutdownMinutes"]["defaultValue"] == 0
    assert "Owner or User Access Administrator" in template["metadata"]["description"]
    assert "Owner or User Access Administrator" in template["parameters"]["idleShutdownMinutes"]["metadata"][
        "description"]
    identity = _res(template, "Microsoft.Compute/virtualMachines")["identity"]["type"]
    assert identity == "[if(equals(copyIndex(), 0), 'SystemAssigned', 'None')]"  # the head only
    assert "identity.principalId" in template["outputs"]["headPrincipalId"]["value"]


def test_ssh_key_and_patch_mode_parameters(template: dict[str, Any]) -> None:
    command = _res(template, "Microsoft.Compute/virtualMachines/extensions")["properties"]["protectedSettings"][
        "commandToExecute"]
    assert "if(empty(parameters('adminSshPublicKey')), 'none', base64(parameters('adminSshPublicKey')))" in command
    assert "if(parameters('sshKeyOnly'), '0', '1')" in command
    windows_config = _res(template, "Microsoft.Compute/virtualMachines")["properties"]["osProfile"][
        "windowsConfiguration"]
    assert windows_config["patchSettings"] == {"patchMode": "[parameters('patchMode')]"}
    assert windows_config["enableAutomaticUpdates"] == "[not(equals(parameters('patchMode'), 'Manual'))]"
    assert template["parameters"]["patchMode"]["defaultValue"] == "Manual"


def _arm_os_disk(size: str) -> str:
    """Evaluate the template's OS disk expression for a size (split with an array of delimiters, last, contains)."""
    expression = azure.os_disk_type_expression("SIZE")
    assert expression == ("if(contains(toLower(last(split(split(SIZE, '_')[1], createArray('0', '1', '2', '3', "
                          "'4', '5', '6', '7', '8', '9')))), 's'), 'Premium_LRS', 'StandardSSD_LRS')")
    features = re.split("[0-9]", size.split("_")[1])[-1]
    return "Premium_LRS" if "s" in features.lower() else "StandardSSD_LRS"


@pytest.mark.parametrize(("size", "disk"), [
    ("Standard_D4s_v5", "Premium_LRS"), ("Standard_HB120rs_v3", "Premium_LRS"), ("Standard_D4_v5", "StandardSSD_LRS"),
    ("Standard_A2_v2", "StandardSSD_LRS"), ("Standard_E64-32s_v5", "Premium_LRS"), ("Standard_F16", "StandardSSD_LRS"),
    ("Standard_NC24ads_A100_v4", "Premium_LRS"), ("Standard_D2a_v4", "StandardSSD_LRS")])
def test_os_disk_type_fits_the_size(size: str, disk: str, template: dict[str, Any]) -> None:
    assert azure.os_disk_type(size) == disk == _arm_os_disk(size)
    os_disk = _res(template, "Microsoft.Compute/virtualMachines")["properties"]["storageProfile"]["osDisk"]
    assert os_disk["managedDisk"]["storageAccountType"] == f"[{azure.os_disk_type_expression(arm._p('vmSize'))}]"


def test_form_limits_equal_the_template_limits(template: dict[str, Any], azure_spec: ClusterSpec) -> None:
    ui = arm_ui.create_ui_definition(azure_spec)
    controls = {c["name"]: c for c in ui["parameters"]["steps"][0]["elements"]}
    for name, param in template["parameters"].items():
        if param["type"] != "int":
            continue
        low, high = param["minValue"], param["maxValue"]
        checks = controls[name]["constraints"]["validations"]
        assert checks[1]["isValid"] == (f"[and(greaterOrEquals(int(steps('cluster').{name}), {low}), "
                                        f"lessOrEquals(int(steps('cluster').{name}), {high}))]"), name
    assert (template["parameters"]["nodeCount"]["minValue"], template["parameters"]["nodeCount"]["maxValue"]) == \
        (1, 256)


def test_names_carry_the_cluster_name_so_two_clusters_share_a_group(template: dict[str, Any]) -> None:
    for resource in template["resources"]:
        if resource["type"].startswith("Microsoft.Authorization/"):
            assert "parameters('clusterName')" in resource["name"], resource["type"]
            continue
        assert "parameters('clusterName')" in resource["name"] or resource["name"].startswith("[variables('names')")
    assert set(template["variables"]["names"].values()) == {
        "[format('{0}-vnet', parameters('clusterName'))]", "[format('{0}-nsg', parameters('clusterName'))]",
        "[format('{0}-ppg', parameters('clusterName'))]"}
