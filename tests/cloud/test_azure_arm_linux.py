"""The generated ARM template and portal form of a Linux cluster: Azure schemas, unknown keys, checkov, the arm-ttk
rules of test_azure_arm_rules.py (imported, so they run against this template too) and the Linux specifics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mpicloud.render import arm, azure
from mpicloud.render.azure import arm_linux, cloud_init
from mpicloud.spec import ClusterSpec, load_spec, spec_from_dict
from tests.cloud.armcheck import BASE, ArmSchemas, checkov, resource_ref
from tests.cloud.test_azure_arm import TEMPLATE_KEYS
from tests.cloud.test_azure_arm_rules import (  # noqa: F401  (run again, on this module's template)
    test_admin_credentials_and_size_are_expressions,
    test_api_versions_are_literal_recent_and_ga,
    test_depends_on_best_practices,
    test_every_parameter_and_variable_is_used,
    test_ids_come_from_resource_functions,
    test_location_is_a_parameter_defaulting_to_the_resource_group,
    test_no_blanks,
    test_no_hardcoded_cloud_hosts,
    test_outputs_hold_no_secrets,
    test_schema_is_current,
    test_secure_parameters,
)

ROOT = Path(__file__).resolve().parents[2]
#: no Microsoft.KeyVault schema in ../shared/schemas/arm: the vault is checked by checkov and the rules only
UNSCHEMED = {"Microsoft.KeyVault/vaults"}
CHECKOV_SKIPS = {
    "CKV_AZURE_50": "no VM extension is used; the rule misreads the custom data",
    "CKV_AZURE_151": "Azure Disk Encryption needs a Key Vault key the cluster does not manage; managed disks are "
                     "encrypted at rest with platform keys",
    "CKV_AZURE_97": "encryption at host needs the EncryptionAtHost subscription feature and a supporting size",
    "CKV_AZURE_45": "detect-secrets over the gzipped custom data; the same rule is "
                    "test_custom_data_holds_only_the_scripts_and_public_settings",
    "CKV_AZURE_110": "purge protection would keep a deleted cluster's vault name taken for the retention period",
    "CKV_AZURE_42": "the vault holds only secrets the head node regenerates; soft delete is on (7 days)",
    "CKV_AZURE_189": "the nodes reach the vault through the subnet's service endpoint, which needs public network "
                     "access Enabled; networkAcls deny every other network (a private endpoint is the alternative)",
}


@pytest.fixture(scope="module")
def spec() -> ClusterSpec:
    return load_spec(ROOT / "examples" / "azure-linux.yaml")


@pytest.fixture(scope="module")
def template(spec: ClusterSpec) -> dict[str, Any]:
    return arm_linux.azuredeploy(spec)


@pytest.fixture(scope="module")
def schemas(arm_schema_dir: Path) -> ArmSchemas:
    return ArmSchemas(arm_schema_dir)


def _of(template: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [r for r in template["resources"] if r["type"] == kind]


def test_template_matches_the_azure_schemas_without_unknown_keys(schemas: ArmSchemas,
                                                                  template: dict[str, Any]) -> None:
    checked = dict(template, resources=[r for r in template["resources"] if r["type"] not in UNSCHEMED])
    assert schemas.template_errors(checked) == []
    for res in checked["resources"]:
        unknown = {k for k in schemas.unknown_keys(resource_ref(res), res) if k.strip("/") not in TEMPLATE_KEYS}
        assert unknown == set(), (res["type"], unknown)
    assert {r["type"] for r in template["resources"]} - {r["type"] for r in checked["resources"]} == UNSCHEMED


def test_ui_definition_matches_its_schema_and_the_parameters(schemas: ArmSchemas, spec: ClusterSpec,
                                                              template: dict[str, Any]) -> None:
    ui = arm_linux.create_ui_definition(spec)
    assert schemas.errors(BASE + "0.1.2-preview/CreateUIDefinition.MultiVm.json#", ui) == []
    assert set(ui["parameters"]["outputs"]) == set(template["parameters"])


def test_ssh_keys_only_and_ssh_only_from_the_allowed_network(template: dict[str, Any]) -> None:
    assert "password" not in json.dumps(template["parameters"]).lower().replace("passwordauthentication", "")
    vm = _of(template, "Microsoft.Compute/virtualMachines")[0]
    linux = vm["properties"]["osProfile"]["linuxConfiguration"]
    assert linux["disablePasswordAuthentication"] is True
    assert linux["ssh"]["publicKeys"][0]["keyData"] == "[parameters('adminSshPublicKey')]"
    rules = _of(template, "Microsoft.Network/networkSecurityGroups")[0]["properties"]["securityRules"]
    assert [(r["properties"]["destinationPortRange"], r["properties"]["sourceAddressPrefix"]) for r in rules] == \
        [("22", "[parameters('allowedSourceCidr')]")]


def test_custom_data_is_the_rendered_cloud_config_and_the_nodes_read_their_tags(spec: ClusterSpec,
                                                                                template: dict[str, Any]) -> None:
    variables = template["variables"]
    ips = variables["privateIps"]
    assert ips[:2] == ["10.0.0.10", "10.0.0.11"] and len(ips) == template["parameters"]["nodeCount"]["maxValue"]
    assert variables["headCustomData"] == cloud_init.custom_data(spec, 0, ips)
    assert variables["workerCustomData"] == cloud_init.custom_data(spec, None, ips)
    vm = _of(template, "Microsoft.Compute/virtualMachines")[0]
    assert vm["tags"] == "[union(variables('tags'), variables('nodeTags'))]"
    assert set(variables["nodeTags"]) == {"mpicloud:nodes", "mpicloud:slots", "mpicloud:idle-minutes",
                                          "mpicloud:vault", "mpicloud:arm"}
    nic = _of(template, "Microsoft.Network/networkInterfaces")[0]["properties"]["ipConfigurations"][0]
    assert nic["properties"]["privateIPAddress"] == "[variables('privateIps')[copyIndex()]]"


def test_identities_get_the_vault_only_and_the_head_deallocates(template: dict[str, Any]) -> None:
    vault = _of(template, "Microsoft.KeyVault/vaults")[0]["properties"]
    assert vault["enableRbacAuthorization"] is True and vault["networkAcls"]["defaultAction"] == "Deny"
    assert "accessPolicies" not in vault
    roles = _of(template, "Microsoft.Authorization/roleAssignments")
    on_vault = next(r for r in roles if "KeyVault" in r["scope"])
    assert azure.SECRETS_OFFICER in on_vault["properties"]["roleDefinitionId"]
    assert azure.SECRETS_USER in on_vault["properties"]["roleDefinitionId"]
    deallocate = next(r for r in roles if "virtualMachines" in r["scope"])
    assert "-node{1}" in deallocate["scope"] and deallocate["condition"] == \
        "[greater(parameters('idleShutdownMinutes'), 0)]"
    assert "identity.principalId" in template["outputs"]["headPrincipalId"]["value"]  # blob-access.json's input
    assert _of(template, "Microsoft.Authorization/roleDefinitions")[0]["properties"]["permissions"][0]["actions"] == \
        ["Microsoft.Compute/virtualMachines/read", "Microsoft.Compute/virtualMachines/deallocate/action"]


def test_every_taggable_resource_is_tagged(template: dict[str, Any]) -> None:
    for res in template["resources"]:
        if not res["type"].startswith("Microsoft.Authorization/"):
            assert res["tags"] in ("[variables('tags')]", "[union(variables('tags'), variables('nodeTags'))]"), \
                res["type"]


def test_rdma_sizes_only_when_the_spec_asks(spec: ClusterSpec, template: dict[str, Any]) -> None:
    assert template["parameters"]["vmSize"]["allowedValues"][0] == "Standard_HB120rs_v3"
    doc = {**spec.model_dump(mode="json", exclude_none=True), "size": "Standard_D4s_v5",
           "azure": {"linux_image": "ubuntu"}}
    plain = arm_linux.azuredeploy(spec_from_dict(doc))
    assert "allowedValues" not in plain["parameters"]["vmSize"]
    assert plain["parameters"]["linuxImage"]["defaultValue"] == "ubuntu"


def test_template_size_does_not_grow_with_nodes(spec: ClusterSpec) -> None:
    doc = spec.model_dump(mode="json", exclude_none=True)
    small, large = (arm_linux.azuredeploy(spec_from_dict({**doc, "nodes": n})) for n in (1, 200))
    assert len(small["resources"]) == len(large["resources"])
    assert abs(len(json.dumps(small)) - len(json.dumps(large))) < 10


def test_deploy_button_points_at_the_linux_folder() -> None:
    url = arm.deploy_button_url("https://raw.githubusercontent.com/OWNER/mpicloud/main/", "templates/arm/linux")
    assert "templates%2Farm%2Flinux%2Fazuredeploy.json/createUIDefinitionUri/" in url


def test_checkov_is_clean_apart_from_documented_skips(template: dict[str, Any], tmp_path: Path) -> None:
    report = checkov(template, CHECKOV_SKIPS, tmp_path)
    failed = [(c["check_id"], c["check_name"]) for c in report["results"]["failed_checks"]]
    assert failed == []
    assert report["summary"]["passed"] >= 5 and report["summary"]["parsing_errors"] == 0
