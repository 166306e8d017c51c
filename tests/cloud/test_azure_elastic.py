"""Elastic clusters on Azure, the ARM side: the elastic Linux and Windows templates against the Azure schemas and
checkov, the head's custom role (exactly ELASTIC_ACTIONS, assigned on the compute VMs only, evaluated for concrete
node counts), deterministic names, the head's runner.json pool and its boot command, the Windows bundle's size."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from mpicloud.render import arm, azure, windows_bootstrap
from mpicloud.render.azure import arm_linux, cloud_init, powershell
from mpicloud.render.runner_config import runner_root
from mpicloud.spec import ClusterSpec, load_spec, spec_from_dict
from tests.cloud import test_azure_arm, test_azure_arm_linux
from tests.cloud.armcheck import BASE, ArmSchemas, checkov, resource_ref
from tests.cloud.test_azure_arm import TEMPLATE_KEYS

ROOT = Path(__file__).resolve().parents[2]
#: os -> (example, renderer, resource types without a schema in ../shared/schemas/arm, checkov skips, extra keys)
CASES = {
    "windows": ("azure-windows-elastic.yaml", arm.azuredeploy, set(), test_azure_arm.CHECKOV_SKIPS,
                test_azure_arm.DOCUMENTED_EXTRAS),
    "linux": ("azure-linux-elastic.yaml", arm_linux.azuredeploy, test_azure_arm_linux.UNSCHEMED,
              test_azure_arm_linux.CHECKOV_SKIPS, {}),
    # Slurm's power saving: the same template, the head's custom data carries slurm.conf's CLOUD nodes and wrappers
    "linux-slurm": ("azure-linux-elastic-slurm.yaml", arm_linux.azuredeploy, test_azure_arm_linux.UNSCHEMED,
                    test_azure_arm_linux.CHECKOV_SKIPS, {}),
}
ASSIGN, DEFINE = "Microsoft.Authorization/roleAssignments", "Microsoft.Authorization/roleDefinitions"


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request: pytest.FixtureRequest) -> tuple[str, ClusterSpec, dict[str, Any]]:
    example, render, *_ = CASES[request.param]
    spec = load_spec(ROOT / "examples" / example)
    return request.param, spec, render(spec)


def _eval(expression: str, params: dict[str, Any], index: int = 0) -> Any:
    """An ARM expression of the few functions these names and scopes use, for concrete parameters and copyIndex."""
    functions = {
        "parameters": params.__getitem__, "copyIndex": lambda: index, "add": lambda a, b: a + b,
        "sub": lambda a, b: a - b,
        "format": lambda text, *args: re.sub(r"\{(\d+)\}", lambda m: str(args[int(m.group(1))]), text)}
    body = expression.removeprefix("[").removesuffix("]")
    assert re.fullmatch(r"[\w(), '{}|\-/.]*", body) and "''" not in body, body
    return eval(body, {"__builtins__": {}}, functions)  # our own template; names checked above


def test_elastic_templates_match_the_azure_schemas_without_unknown_keys(
        case: tuple[str, ClusterSpec, dict[str, Any]], arm_schema_dir: Path) -> None:
    key, _, template = case
    _, _, unschemed, _, extras = CASES[key]
    schemas = ArmSchemas(arm_schema_dir)
    checked = dict(template, resources=[r for r in template["resources"] if r["type"] not in unschemed])
    assert schemas.template_errors(checked) == []
    for res in checked["resources"]:
        unknown = {k for k in schemas.unknown_keys(resource_ref(res), res) if k.strip("/") not in TEMPLATE_KEYS}
        assert unknown <= extras.get(res["type"], set()), (res["type"], unknown)
    assert schemas.unknown_keys(BASE + "2019-04-01/deploymentTemplate.json#", dict(template, resources=[])) == []


def test_elastic_templates_are_checkov_clean(case: tuple[str, ClusterSpec, dict[str, Any]], tmp_path: Path) -> None:
    key, _, template = case
    report = checkov(template, CASES[key][3], tmp_path)
    assert [(c["check_id"], c["check_name"]) for c in report["results"]["failed_checks"]] == []
    assert report["summary"]["passed"] >= 5 and report["summary"]["parsing_errors"] == 0


@pytest.mark.parametrize("node_count", [1, 2, 9])
def test_the_elastic_role_is_exactly_the_node_actions_on_the_compute_vms_only(
        case: tuple[str, ClusterSpec, dict[str, Any]], node_count: int) -> None:
    _, spec, template = case
    roles = [r for r in template["resources"] if r["type"] == DEFINE and "elastic" in r["name"]]
    assert len(roles) == 1 and "condition" not in roles[0]
    role = roles[0]
    assert role["properties"]["permissions"] == [{"actions": list(azure.ELASTIC_ACTIONS)}]
    assert role["properties"]["assignableScopes"] == ["[resourceGroup().id]"]  # custom roles: no narrower scope
    assert role["name"] == f"[{arm.ELASTIC_ROLE}]"
    assigned = [r for r in template["resources"] if r["type"] == ASSIGN and arm.ELASTIC_ROLE in
                r["properties"]["roleDefinitionId"]]
    assert len(assigned) == 1
    one = assigned[0]
    params = {"clusterName": "c1", "nodeCount": node_count}
    prefix = spec.target.platform.node_prefix
    count = _eval(one["copy"]["count"], params)
    scopes = [_eval(one["scope"], params, i) for i in range(count)]
    assert scopes == [f"Microsoft.Compute/virtualMachines/c1-{prefix}{i}" for i in range(1, node_count)]
    names = {_eval(one["name"].replace("guid(resourceGroup().id, ", "format('{0}|{1}|{2}', "), params, i)
             for i in range(count)}
    assert len(names) == count  # one deterministic assignment per VM
    head = f"[reference(resourceId('Microsoft.Compute/virtualMachines', format('{{0}}-{prefix}0', " \
           "parameters('clusterName'))), '2024-11-01', 'full').identity.principalId]"
    assert one["properties"]["principalId"] == head and one["properties"]["principalType"] == "ServicePrincipal"
    for depend in one["dependsOn"][:1]:
        assert _eval(depend.replace("resourceId('Microsoft.Compute/virtualMachines', ", "format('{0}', "),
                     params, 0) == f"c1-{prefix}1"
    # every other role assignment keeps its own role (idle shutdown, the vault): none grants start
    others = [r for r in template["resources"] if r["type"] == DEFINE and r is not role]
    assert all("start/action" not in json.dumps(r) for r in others)


def test_a_fixed_template_has_no_elastic_role(azure_spec: ClusterSpec) -> None:
    text = json.dumps(arm.azuredeploy(azure_spec))
    assert "elastic" not in text and "start/action" not in text


def test_names_are_deterministic_so_a_second_deployment_updates_in_place(
        case: tuple[str, ClusterSpec, dict[str, Any]]) -> None:
    key, spec, template = case
    again = CASES[key][1](spec)
    assert json.dumps(template, sort_keys=True) == json.dumps(again, sort_keys=True)
    text = json.dumps(template)
    assert "newGuid" not in text and "utcNow" not in text
    vm = next(r for r in template["resources"] if r["type"] == "Microsoft.Compute/virtualMachines")
    prefix = spec.target.platform.node_prefix
    assert [_eval(vm["name"], {"clusterName": "c1"}, i) for i in range(3)] == [f"c1-{prefix}{i}" for i in range(3)]
    assert template["parameters"]["nodeCount"]["defaultValue"] == spec.elastic.max + 1  # type: ignore[union-attr]


def _windows_config(script: str) -> dict[str, Any]:
    text = re.search(r"\$config = '(.*?)' \| ConvertFrom-Json", script, re.S)
    assert text
    config: dict[str, Any] = json.loads(text.group(1).replace("''", "'"))
    return config


def test_the_heads_runner_json_pool_and_its_boot_command() -> None:
    win = load_spec(ROOT / "examples" / "azure-windows-elastic.yaml")
    script = windows_bootstrap.bootstrap_ps1(win)
    pool = _windows_config(script)["pool"]
    python, runner = win.target.platform.python[0], "C:\\ProgramData\\mpicloud\\azure_nodes.py"
    assert pool["resume_command"] == [python, runner, "resume", "--root", "C:\\shared\\.mpicloud"]
    assert pool["suspend_command"] == [python, runner, "suspend", "--root", "C:\\shared\\.mpicloud"]
    assert (pool["min"], pool["max"], pool["idle_minutes"], pool["head_runs_jobs"]) == (1, 8, 20, False)
    assert pool["resume_after_pause"] and pool["replace_unreachable_seconds"] == azure.REPLACE_UNREACHABLE_SECONDS
    # the deployment's values come at boot, no secret; a started node is up once sshd and MS-MPI's launch service answer
    assert pool["azure"] == {"api_version": azure.COMPUTE_API, "ready_ports": [22, windows_bootstrap.LAUNCH_PORT]}
    configure = f"& '{python}' '{runner}' 'configure' '--root' 'C:\\shared\\.mpicloud' --arm $ArmEndpoint"
    assert script.index("'runner.json'), ($config") < script.index(configure) < script.index("Start-ScheduledTask")

    lin = load_spec(ROOT / "examples" / "azure-linux-elastic.yaml")
    head = yaml.safe_load(cloud_init.cloud_config(lin, 0))
    files = {f["path"]: f["content"] for f in head["write_files"]}
    pool = json.loads(files["/opt/mpicloud/runner.base.json"])["pool"]
    assert pool["resume_command"] == ["/usr/bin/python3", "/opt/mpicloud/azure_nodes.py", "resume", "--root",
                                      runner_root(lin.shared_storage.path)]
    assert pool["azure"] == {"api_version": azure.COMPUTE_API, "ready_ports": [22]}
    assert (pool["min"], pool["max"]) == (0, 4)
    steps = [" ".join(c[:3]) for c in head["runcmd"]]
    unpack = next(i for i, c in enumerate(steps) if c.startswith("bash /opt/mpicloud/azure-runner.sh"))
    # after the runner files (and runner.json, cluster-files.sh) exist, before the runner starts
    assert steps[unpack + 1] == "/usr/bin/python3 /opt/mpicloud/azure_nodes.py configure"
    assert head["runcmd"][unpack + 1] == azure.configure_command(lin)
    assert steps.index("systemctl enable --now") > unpack + 1
    worker = yaml.safe_load(cloud_init.cloud_config(lin, None))
    assert "configure" not in json.dumps(worker["runcmd"])  # only the head


def test_the_largest_elastic_windows_bootstrap_fits_azures_user_data() -> None:
    doc = yaml.safe_load((ROOT / "examples" / "azure-windows-elastic.yaml").read_text(encoding="utf-8"))
    doc.update(name="w" * 32, nodes={"min": 255, "max": 255}, scale_down_idle_minutes=10080,
               bucket={"kind": "azure_blob", "account": "simdata", "container": "runs"})
    packed = powershell.user_data(windows_bootstrap.bootstrap_ps1(spec_from_dict(doc)))
    assert len(packed) <= powershell.USER_DATA_LIMIT
    print(f"largest elastic Windows userData: {len(packed)} of {powershell.USER_DATA_LIMIT}")
