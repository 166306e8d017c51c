"""arm-ttk best-practice rules (reference section 12) and mpicloud's own rules, re-implemented over the template."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mpicloud.render import arm
from mpicloud.spec import ClusterSpec

#: the newest GA apiVersion of a type when it is older than the 730-day window (arm-ttk accepts those)
NEWEST_GA = {"Microsoft.Authorization/roleAssignments": "2022-04-01",
             "Microsoft.Authorization/roleDefinitions": "2022-04-01"}
HARDCODED_HOSTS = ("management.azure.com", "core.windows.net", "database.windows.net", "login.microsoftonline.com",
                   "graph.windows.net", "vault.azure.net", "azuredatalakestore.net", "azurecr.io", "gallery.azure.com")
#: "settings": the generic extension schema requires it, and the InfiniBand driver extension has none
BLANK_OK = {"resources", "outputs", "variables", "parameters", "functions", "properties", "defaultValue", "value",
            "metadata", "tags", "settings"}
ID_FUNCTIONS = ("resourceId(", "subscriptionResourceId(", "extensionResourceId(", "tenantResourceId(", "reference(",
                "parameters(", "variables(", "if(", "subscription(", "guid(")


@pytest.fixture(scope="module")
def template(azure_spec: ClusterSpec) -> dict[str, Any]:
    return arm.azuredeploy(azure_spec)


def _walk(node: Any, path: str = "") -> Iterator[tuple[str, str, Any]]:
    """(path, key, value) for every key of every object, depth first."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield path, key, value
            yield from _walk(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}/{i}")


def _secure(template: dict[str, Any]) -> set[str]:
    return {n for n, p in template["parameters"].items() if p["type"].lower() in {"securestring", "secureobject"}}


def _uses_secret(text: str, secure: set[str]) -> bool:
    return any(f"parameters('{n}')" in text for n in secure) or bool(re.search(r"\blist\w*\(", text))


def test_schema_is_current(template: dict[str, Any]) -> None:
    assert template["$schema"] == "https://schema.management.azure.com/schemas/2019-04-01/deploymentTemplate.json#"
    assert "languageVersion" not in template and isinstance(template["resources"], list)


def test_api_versions_are_literal_recent_and_ga(template: dict[str, Any], arm_schema_dir: Path) -> None:
    snapshot = max(dt.date.fromisoformat(p.name) for p in arm_schema_dir.iterdir()
                   if re.fullmatch(r"\d{4}-\d{2}-\d{2}", p.name))
    for res in template["resources"]:
        version = res["apiVersion"]
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", version), (res["type"], version)
        age = (snapshot - dt.date.fromisoformat(version)).days
        assert age <= 730 or NEWEST_GA.get(res["type"]) == version, (res["type"], version)
    assert "providers(" not in json.dumps(template)


def test_location_is_a_parameter_defaulting_to_the_resource_group(template: dict[str, Any]) -> None:
    assert template["parameters"]["location"] == {**template["parameters"]["location"], "type": "string",
                                                  "defaultValue": "[resourceGroup().location]"}
    text = json.dumps({k: v for k, v in template.items() if k != "parameters"})
    assert "resourceGroup().location" not in text
    for res in template["resources"]:
        assert res.get("location", "[x]").startswith("[") or res["location"] == "global"


def test_every_parameter_and_variable_is_used(template: dict[str, Any]) -> None:
    body = json.dumps({k: v for k, v in template.items() if k != "parameters"})
    for name in template["parameters"]:
        assert f"parameters('{name}')" in body, name
    rest = json.dumps({k: v for k, v in template.items() if k != "variables"})
    for name in template["variables"]:
        assert f"variables('{name}')" in rest, name


def test_secure_parameters(template: dict[str, Any]) -> None:
    for name, param in template["parameters"].items():
        if re.search("password|secret|accountkey", name, re.I):
            assert param["type"].lower() in {"securestring", "secureobject"}, name
        if param["type"].lower() == "securestring":
            assert not param.get("defaultValue") or "newGuid()" in param["defaultValue"], name
        for bound in ("minValue", "maxValue"):
            assert bound not in param or isinstance(param[bound], int), (name, bound)
    assert "defaultValue" not in template["parameters"]["adminUsername"]


def test_admin_credentials_and_size_are_expressions(template: dict[str, Any]) -> None:
    for _, key, value in _walk(template["resources"]):
        if key in {"adminUsername", "adminPassword"}:
            assert isinstance(value, str) and value.startswith("[parameters("), key
        if key == "vmSize":
            assert value == "[parameters('vmSize')]"


def test_commands_with_secrets_only_in_protected_settings(template: dict[str, Any]) -> None:
    secure = _secure(template)
    exts = [r for r in template["resources"] if r["type"].endswith("/extensions")
            and r["properties"]["type"] != "InfiniBandDriverWindows"]
    assert exts
    for ext in exts:
        props = ext["properties"]
        assert props["type"] == "CustomScriptExtension" and props["autoUpgradeMinorVersion"] is True
        assert "commandToExecute" not in props["settings"] and props["settings"]
        assert not _uses_secret(json.dumps(props["settings"]), secure)
        # the password is a protected setting of its own, read by the script: never part of the command line
        assert not _uses_secret(props["protectedSettings"]["commandToExecute"], secure)
        assert props["protectedSettings"]["adminPassword"] == "[parameters('adminPassword')]"


def test_custom_data_and_settings_hold_no_secret(template: dict[str, Any]) -> None:
    secure = _secure(template)
    for path, key, value in _walk(template):
        if key in {"customData", "userData"} or path.startswith("/variables"):
            assert not _uses_secret(json.dumps(value), secure), (path, key)
    vm = next(r for r in template["resources"] if r["type"] == "Microsoft.Compute/virtualMachines")
    # userData can change on an existing VM (customData cannot: PropertyChangeNotAllowed on redeploy)
    assert vm["properties"]["userData"] == "[variables('bootstrapUserData')]"
    assert "customData" not in vm["properties"]["osProfile"]


def test_outputs_hold_no_secrets(template: dict[str, Any]) -> None:
    secure = _secure(template)
    for name, output in template["outputs"].items():
        assert "password" not in name.lower()
        assert not _uses_secret(json.dumps(output), secure), name


def test_vm_image_is_latest_and_not_preview(template: dict[str, Any]) -> None:
    vm = next(r for r in template["resources"] if r["type"] == "Microsoft.Compute/virtualMachines")
    image = vm["properties"]["storageProfile"]["imageReference"]
    assert image["version"] == "latest" and "preview" not in json.dumps(image).lower()
    assert all("preview" not in sku for sku in template["variables"]["imageSkus"].values())


def test_ids_come_from_resource_functions(template: dict[str, Any]) -> None:
    for path, key, value in _walk(template["resources"]):
        if key.lower().endswith("id") and isinstance(value, str) and "/tags" not in path:
            assert value.startswith("[") and any(f in value for f in ID_FUNCTIONS), (path, key, value)


def test_depends_on_best_practices(template: dict[str, Any]) -> None:
    for res in template["resources"]:
        for dep in res.get("dependsOn", []):
            assert not dep.startswith("[if(")
            assert not dep.startswith("[concat(") or "copyIndex()" in dep


def test_no_blanks(template: dict[str, Any]) -> None:
    for path, key, value in _walk(template):
        if value in ({}, [], "") and key not in BLANK_OK:
            pytest.fail(f"blank value at {path}/{key}")


def test_no_hardcoded_cloud_hosts(template: dict[str, Any]) -> None:
    text = json.dumps(template).replace("https://schema.management.azure.com", "")
    assert [h for h in HARDCODED_HOSTS if h in text] == []


def test_mpicloud_rules(template: dict[str, Any]) -> None:
    res = {r["type"]: r for r in template["resources"]}
    vm = res["Microsoft.Compute/virtualMachines"]
    assert vm["properties"]["osProfile"]["computerName"] == "[format('N{0}', copyIndex())]"
    assert vm["name"] == "[format('{0}-N{1}', parameters('clusterName'), copyIndex())]"
    assert len(f"N{255}") <= 15
    assert "proximityPlacementGroups" in vm["properties"]["proximityPlacementGroup"]["id"]
    pip = res["Microsoft.Network/publicIPAddresses"]
    assert pip["sku"]["name"] == "Standard" and pip["properties"]["publicIPAllocationMethod"] == "Static"
    for rule in res["Microsoft.Network/networkSecurityGroups"]["properties"]["securityRules"]:
        assert rule["properties"]["sourceAddressPrefix"] == "[parameters('allowedSourceCidr')]"
        assert rule["properties"]["destinationPortRange"] in {"22", "3389"}
    for resource in template["resources"]:
        assert resource["type"] in {"Microsoft.Authorization/roleAssignments",
                                    "Microsoft.Authorization/roleDefinitions"} or \
            resource["tags"] == "[variables('tags')]", resource["type"]
    role = res["Microsoft.Authorization/roleAssignments"]
    assert role["scope"].startswith("[format('Microsoft.Compute/virtualMachines/")
    assert role["condition"] == "[greater(parameters('idleShutdownMinutes'), 0)]"
