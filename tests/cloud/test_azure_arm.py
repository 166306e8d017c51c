"""The generated ARM template and portal form: Azure JSON schemas, unknown keys, checkov, form <-> template."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from mpicloud.render import arm, arm_ui
from mpicloud.spec import ClusterSpec, spec_from_dict
from tests.cloud.armcheck import BASE, ArmSchemas, checkov, resource_ref

#: template-level resource keys (deploymentTemplate.json), not part of the provider schemas
TEMPLATE_KEYS = {"copy", "dependsOn", "condition", "scope"}
#: CustomScriptExtension's documented `settings.timestamp` (reruns on change) is missing from the schema, and so
#: are forceUpdateTag in the extension schema file and our own protected key (read by the bootstrap itself)
DOCUMENTED_EXTRAS = {"Microsoft.Compute/virtualMachines/extensions": {
    "/properties/settings/timestamp", "/properties/forceUpdateTag", "/properties/protectedSettings/adminPassword"}}
#: checkov findings skipped on purpose; everything else fails the test
CHECKOV_SKIPS = {
    "CKV_AZURE_178": "Linux-only rule (SSH keys); these are Windows VMs that need the password for MS-MPI",
    "CKV_AZURE_50": "the bootstrap is a VM extension by design (one CustomScriptExtension per node)",
    "CKV_AZURE_151": "Azure Disk Encryption needs a Key Vault the cluster does not create; managed disks are "
                     "encrypted at rest with platform keys",
    "CKV_AZURE_97": "encryption at host needs the EncryptionAtHost subscription feature and a supporting size; "
                    "enabling it by default would break deployments for most users",
    "CKV_AZURE_177": "automatic updates are the user's choice (patchMode); the default Manual means no Windows "
                     "Update reboot in the middle of a job (docs/azure-windows.md, item 5)",
    "CKV_AZURE_45": "detect-secrets over the 26 KB bootstrap takes minutes; the same rule (no secret in "
                    "customData) is test_custom_data_and_settings_hold_no_secret",
}


@pytest.fixture(scope="module")
def schemas(arm_schema_dir: Path) -> ArmSchemas:
    return ArmSchemas(arm_schema_dir)


@pytest.fixture(scope="module")
def template(azure_spec: ClusterSpec) -> dict[str, Any]:
    return arm.azuredeploy(azure_spec)


@pytest.fixture(scope="module")
def ui(azure_spec: ClusterSpec) -> dict[str, Any]:
    return arm_ui.create_ui_definition(azure_spec)


def _of(template: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [r for r in template["resources"] if r["type"] == kind]


def test_template_matches_the_azure_schemas(schemas: ArmSchemas, template: dict[str, Any]) -> None:
    assert schemas.template_errors(template) == []
    assert {(r["type"], r["apiVersion"]) for r in template["resources"]} == {
        ("Microsoft.Network/networkSecurityGroups", "2024-05-01"), ("Microsoft.Network/virtualNetworks", "2024-05-01"),
        ("Microsoft.Network/publicIPAddresses", "2024-05-01"), ("Microsoft.Network/networkInterfaces", "2024-05-01"),
        ("Microsoft.Compute/proximityPlacementGroups", "2024-11-01"),
        ("Microsoft.Compute/virtualMachines", "2024-11-01"),
        ("Microsoft.Compute/virtualMachines/extensions", "2024-11-01"),
        ("Microsoft.Authorization/roleDefinitions", "2022-04-01"),
        ("Microsoft.Authorization/roleAssignments", "2022-04-01")}


def test_schema_check_catches_an_invalid_enum(schemas: ArmSchemas, template: dict[str, Any]) -> None:
    broken = copy.deepcopy(template)
    _of(broken, "Microsoft.Network/networkSecurityGroups")[0]["properties"]["securityRules"][0]["properties"][
        "direction"] = "In"
    assert schemas.template_errors(broken)


def test_no_unknown_keys(schemas: ArmSchemas, template: dict[str, Any]) -> None:
    for res in template["resources"]:
        unknown = {k for k in schemas.unknown_keys(resource_ref(res), res) if k.strip("/") not in TEMPLATE_KEYS}
        assert unknown <= DOCUMENTED_EXTRAS.get(res["type"], set()), (res["type"], unknown)
    assert schemas.unknown_keys(BASE + "2019-04-01/deploymentTemplate.json#", dict(template, resources=[])) == []


def test_unknown_key_check_catches_typos(schemas: ArmSchemas, template: dict[str, Any]) -> None:
    nic = copy.deepcopy(_of(template, "Microsoft.Network/networkInterfaces")[0])
    nic["properties"]["enableAcceleratedNetworkin"] = True
    nic["properties"]["ipConfigurations"][0]["properties"]["publicIpAddres"] = {"id": "x"}
    vm = copy.deepcopy(_of(template, "Microsoft.Compute/virtualMachines")[0])
    vm["properties"]["osProfile"]["computerNam"] = "N0"
    assert {"/properties/enableAcceleratedNetworkin", "/properties/ipConfigurations/0/properties/publicIpAddres"} \
        <= set(schemas.unknown_keys(resource_ref(nic), nic))
    assert "/properties/osProfile/computerNam" in schemas.unknown_keys(resource_ref(vm), vm)


def test_ui_definition_matches_its_schema(schemas: ArmSchemas, ui: dict[str, Any]) -> None:
    assert schemas.errors(BASE + "0.1.2-preview/CreateUIDefinition.MultiVm.json#", ui) == []
    bad = copy.deepcopy(ui)
    bad["parameters"]["steps"][0]["elements"][1]["recomendedSizes"] = ["x"]
    assert schemas.errors(BASE + "0.1.2-preview/CreateUIDefinition.MultiVm.json#", bad)


def test_ui_outputs_are_the_template_parameters(template: dict[str, Any], ui: dict[str, Any]) -> None:
    params = template["parameters"]
    outputs = ui["parameters"]["outputs"]
    assert set(outputs) == set(params)
    assert outputs["location"] == "[location()]"
    controls = {c["name"]: c for c in ui["parameters"]["basics"] + ui["parameters"]["steps"][0]["elements"]}
    assert {p for p, d in params.items() if "defaultValue" not in d} <= set(controls)
    assert controls["adminPassword"]["type"] == "Microsoft.Compute.CredentialsCombo"
    assert controls["adminPassword"]["options"]["hideConfirmation"] is False
    assert "defaultValue" not in controls["adminUsername"]
    assert params["vmSize"]["defaultValue"] in controls["vmSize"]["recommendedSizes"]
    assert [v["value"] for v in controls["windowsVersion"]["constraints"]["allowedValues"]] == \
        params["windowsVersion"]["allowedValues"]
    for control in controls.values():
        assert control.get("toolTip"), control["name"]
        constraints = control.get("constraints", {})
        assert "regex" not in constraints or constraints.get("validationMessage"), control["name"]


def _spec(azure_spec: ClusterSpec, **changes: Any) -> ClusterSpec:
    return spec_from_dict({**azure_spec.model_dump(mode="json", exclude_none=True), **changes})


def test_template_size_does_not_grow_with_nodes(azure_spec: ClusterSpec) -> None:
    small, large = (arm.azuredeploy(_spec(azure_spec, nodes=n)) for n in (1, 200))
    assert len(small["resources"]) == len(large["resources"])
    assert abs(len(json.dumps(small)) - len(json.dumps(large))) < 10
    assert all(r.get("copy", {}).get("count") == "[parameters('nodeCount')]"
               for r in small["resources"] if r["type"] not in {"Microsoft.Network/networkSecurityGroups",
                                                                "Microsoft.Network/virtualNetworks",
                                                                "Microsoft.Compute/proximityPlacementGroups",
                                                                "Microsoft.Authorization/roleDefinitions"})


def test_infiniband_driver_only_when_asked(azure_spec: ClusterSpec) -> None:
    template = arm.azuredeploy(azure_spec)
    assert template["parameters"]["infiniBand"]["defaultValue"] is False
    infiniband = [r for r in _of(template, "Microsoft.Compute/virtualMachines/extensions")
                  if r["properties"]["type"] == "InfiniBandDriverWindows"]
    assert len(infiniband) == 1 and infiniband[0]["condition"] == "[parameters('infiniBand')]"
    assert infiniband[0]["properties"]["publisher"] == "Microsoft.HpcCompute"
    rdma = arm.azuredeploy(_spec(azure_spec, size="Standard_HB120rs_v3", azure={"rdma": True}))
    assert rdma["parameters"]["infiniBand"]["defaultValue"] is True


def test_without_ppg(azure_spec: ClusterSpec) -> None:
    doc = arm.azuredeploy(_spec(azure_spec, azure={"proximity_placement_group": False}))
    assert not _of(doc, "Microsoft.Compute/proximityPlacementGroups")
    assert "proximityPlacementGroup" not in _of(doc, "Microsoft.Compute/virtualMachines")[0]["properties"]


@pytest.fixture(scope="module")
def checkov_report(template: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """checkov --framework arm, once per module."""
    return checkov(template, CHECKOV_SKIPS, tmp_path_factory.mktemp("checkov"))


def test_checkov_is_clean_apart_from_documented_skips(checkov_report: dict[str, Any]) -> None:
    failed = [(c["check_id"], c["check_name"]) for c in checkov_report["results"]["failed_checks"]]
    assert failed == []
    assert checkov_report["summary"]["passed"] >= 5 and checkov_report["summary"]["parsing_errors"] == 0


def test_deploy_button_url_form() -> None:
    url = arm.deploy_button_url("https://raw.githubusercontent.com/OWNER/mpicloud/main/")
    assert url == ("https://portal.azure.com/#create/Microsoft.Template/uri/"
                   "https%3A%2F%2Fraw.githubusercontent.com%2FOWNER%2Fmpicloud%2Fmain%2Ftemplates%2Farm%2Fazuredeploy.json"
                   "/createUIDefinitionUri/"
                   "https%3A%2F%2Fraw.githubusercontent.com%2FOWNER%2Fmpicloud%2Fmain%2Ftemplates%2Farm%2F"
                   "createUiDefinition.json")
