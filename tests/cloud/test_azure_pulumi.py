"""The Pulumi program under mocks: resource counts, NSG sources, where secrets go, tags, component types."""

from __future__ import annotations

import base64
import gzip
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pulumi
import pytest
from pulumi.runtime import rpc

from mpicloud.render import blobaccess, windows_bootstrap
from mpicloud.render.azure import cloud_init, powershell
from mpicloud.spec import ClusterSpec, spec_from_dict
from tests.specdata import PUBKEY

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "infra"))
import azure_mpi
from azure_mpi import MpiCluster, MpiClusterArgs
from azure_mpi.nodes import VM_IGNORED

PASSWORD = "Very'Secret\"Pw-42!"
#: azure-native types without a `tags` property
UNTAGGABLE = {"azure-native:authorization:RoleAssignment", "azure-native:authorization:RoleDefinition"}


def _secret(node: Any) -> bool:
    return isinstance(node, dict) and node.get(rpc._special_sig_key) == rpc._special_secret_sig


def plain(node: Any) -> Any:
    """Inputs with Pulumi's secret wrappers removed."""
    if _secret(node):
        return plain(node["value"])
    if isinstance(node, dict):
        return {k: plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [plain(v) for v in node]
    return node


class Mocks(pulumi.runtime.Mocks):
    """Records every registered resource; `name` and `id` are what Azure would compute."""

    def __init__(self) -> None:
        self.created: list[tuple[str, str, dict[str, Any], bool]] = []
        self.raw: list[tuple[str, str, dict[str, Any]]] = []
        self.options: dict[str, pulumi.ResourceOptions] = {}

    def record(self, args: pulumi.ResourceTransformationArgs) -> None:
        """A transformation on the cluster component: sees every child's resource options (ignore_changes)."""
        self.options[args.name] = args.opts

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        self.raw.append((args.typ, args.name, dict(args.inputs)))
        self.created.append((args.typ, args.name, plain(dict(args.inputs)), args.custom))
        state = plain(dict(args.inputs))
        state.setdefault("name", args.name)
        if args.typ == "azure-native:network:PublicIPAddress":
            state["ipAddress"] = f"198.51.100.{len(self.created)}"
        if args.typ == "azure-native:compute:VirtualMachine":
            state["identity"] = {"type": "SystemAssigned", "principalId": f"principal-{args.name}"}
        return f"/subscriptions/sub/resourceGroups/rg/x/{args.name}", state

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict[str, Any]:
        if args.token == "azure-native:authorization:getClientConfig":
            return {"subscriptionId": "sub", "tenantId": "t", "clientId": "c", "objectId": "o"}
        if args.token == "azure-native:compute:getVirtualMachineExtension":
            vm = args.args["vmName"]
            return {"name": "bootstrap", "instanceView": {"substatuses": [{"message": (
                f"mpicloud: done\nMPICLOUD-HOSTKEY {vm} 256 SHA256:key{vm} root@{vm} (ED25519)\n")}]}}
        return {}


def _spec(base: ClusterSpec, **changes: Any) -> ClusterSpec:
    doc = base.model_dump(mode="json", exclude_none=True)
    for key, value in changes.items():
        doc[key] = {**doc.get(key, {}), **value} if isinstance(value, dict) else value
    return spec_from_dict(doc)


def _deploy(spec: ClusterSpec, check: Callable[[list[tuple[str, str, dict[str, Any], bool]], dict[str, Any]], None],
            mocks: Mocks | None = None) -> pulumi.Output[None]:
    mocks = mocks or Mocks()
    pulumi.runtime.set_mocks(mocks, preview=False)
    cluster = MpiCluster(spec.name, MpiClusterArgs(spec=spec, admin_password=PASSWORD),
                         pulumi.ResourceOptions(transformations=[mocks.record]))
    # the head's role assignments wait for its identity: the check waits for them too
    roles = [r.id for r in cluster.nodes.deallocate_roles + cluster.nodes.elastic_roles]
    return pulumi.Output.all(pulumi.Output.all(**cluster.outputs()), *roles).apply(
        lambda out: check(mocks.created, out[0]))


def _count(created: list[tuple[str, str, dict[str, Any], bool]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for typ, *_ in created:
        counts[typ] = counts.get(typ, 0) + 1
    return counts


@pytest.mark.parametrize("nodes", [1, 2, 16])
@pulumi.runtime.test
def test_resource_counts(azure_spec: ClusterSpec, nodes: int) -> pulumi.Output[None]:
    def check(created: list[tuple[str, str, dict[str, Any], bool]], out: dict[str, Any]) -> None:
        assert _count(created) == {
            "mpicloud:azure:MpiCluster": 1, "mpicloud:azure:Network": 1, "mpicloud:azure:Nodes": 1,
            "mpicloud:azure:Node": nodes, "azure-native:resources:ResourceGroup": 1,
            "azure-native:network:NetworkSecurityGroup": 1, "azure-native:network:VirtualNetwork": 1,
            "azure-native:compute:ProximityPlacementGroup": 1, "azure-native:network:PublicIPAddress": nodes,
            "azure-native:network:NetworkInterface": nodes, "azure-native:compute:VirtualMachine": nodes,
            "azure-native:compute:VirtualMachineExtension": nodes,
            "azure-native:authorization:RoleDefinition": 1, "azure-native:authorization:RoleAssignment": nodes}
        vms = [i for t, _, i, _ in created if t == "azure-native:compute:VirtualMachine"]
        assert sorted(v["osProfile"]["computerName"] for v in vms) == sorted(f"N{i}" for i in range(nodes))
        assert all(v["proximityPlacementGroup"]["id"].endswith("winmpi-ppg") for v in vms)
        assert len(out["public_ips"]) == nodes and out["admin_username"] == "mpiadmin"
        assert out["ssh_command"] == f"ssh mpiadmin@{out['public_ips'][0]}"
        assert out["host_key_fingerprints"] == {f"N{i}": [f"ED25519 SHA256:keyN{i}"] for i in range(nodes)}
        assert out["attach_command"].endswith("--os windows --slots 4 --password-env MPICLOUD_ADMIN_PASSWORD")
    return _deploy(_spec(azure_spec, nodes=nodes), check)


@pulumi.runtime.test
def test_head_nat_gives_only_the_head_a_public_ip(azure_spec: ClusterSpec) -> pulumi.Output[None]:
    def check(created: list[tuple[str, str, dict[str, Any], bool]], out: dict[str, Any]) -> None:
        counts = _count(created)
        assert counts["azure-native:network:PublicIPAddress"] == 2  # N0 + the NAT gateway
        assert counts["azure-native:network:NatGateway"] == 1
        vnet = next(i for t, _, i, _ in created if t == "azure-native:network:VirtualNetwork")
        assert vnet["subnets"][0]["natGateway"]["id"] and vnet["subnets"][0]["defaultOutboundAccess"] is False
        nics = sorted((n, "publicIPAddress" in i["ipConfigurations"][0])
                      for t, n, i, _ in created if t == "azure-native:network:NetworkInterface")
        assert nics == [("N0-nic", True), ("N1-nic", False), ("N2-nic", False)]
        assert out["public_ips"][1:] == ["", ""]
    return _deploy(_spec(azure_spec, nodes=3, azure={"public_ip": "head_nat", "proximity_placement_group": False,
                                                     "accelerated_networking": False}), check)


def _nsg_sources(created: list[tuple[str, str, dict[str, Any], bool]]) -> list[list[str]]:
    nsg = next(i for t, _, i, _ in created if t == "azure-native:network:NetworkSecurityGroup")
    assert sorted(r["destinationPortRange"] for r in nsg["securityRules"]) == ["22", "3389"]
    return [r["sourceAddressPrefixes"] for r in nsg["securityRules"] if "sourceAddressPrefix" not in r]


@pulumi.runtime.test
def test_nsg_only_from_allowed_cidrs(azure_spec: ClusterSpec) -> pulumi.Output[None]:
    def check(created: list[tuple[str, str, dict[str, Any], bool]], _: dict[str, Any]) -> None:
        assert _nsg_sources(created) == [["203.0.113.0/24", "198.51.100.7/32"]] * 2
        assert "*" not in json.dumps(_nsg_sources(created))
    return _deploy(_spec(azure_spec, access={"allowed_cidrs": ["203.0.113.0/24", "198.51.100.7/32"]}), check)


@pulumi.runtime.test
def test_nsg_open_only_when_the_spec_says_so(azure_spec: ClusterSpec) -> pulumi.Output[None]:
    def check(created: list[tuple[str, str, dict[str, Any], bool]], _: dict[str, Any]) -> None:
        assert _nsg_sources(created) == [["0.0.0.0/0"]] * 2
    return _deploy(_spec(azure_spec, access={"allowed_cidrs": ["0.0.0.0/0"]}), check)


def test_empty_allowed_cidrs_is_refused(azure_spec: ClusterSpec) -> None:
    pulumi.runtime.set_mocks(Mocks(), preview=False)
    with pytest.raises(Exception, match="allowed_cidrs is empty"):
        MpiCluster("x", MpiClusterArgs(spec=_spec(azure_spec, access={"allowed_cidrs": []}), admin_password="x"))


def _paths(node: Any, needle: str, path: str = "", secret: bool = False) -> list[str]:
    """Where `needle` occurs; a path inside a Pulumi secret is marked `(secret)`."""
    if _secret(node):
        return _paths(node["value"], needle, path, True)
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in _paths(v, needle, f"{path}/{k}", secret)]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in _paths(v, needle, f"{path}/{i}", secret)]
    return [path + (" (secret)" if secret else "")] if isinstance(node, str) and needle in node else []


@pulumi.runtime.test
def test_secrets_only_in_protected_settings_and_admin_password(azure_spec: ClusterSpec) -> pulumi.Output[None]:
    mocks = Mocks()

    def check(created: list[tuple[str, str, dict[str, Any], bool]], out: dict[str, Any]) -> None:
        assert len(mocks.raw) == len(created) > 10
        utf16 = base64.b64encode(PASSWORD.encode("utf-16-le")).decode()
        for typ, name, inputs in mocks.raw:
            found = (_paths(inputs, PASSWORD), _paths(inputs, powershell.b64(PASSWORD)), _paths(inputs, utf16))
            if typ == "azure-native:compute:VirtualMachine":
                assert found == (["/osProfile/adminPassword (secret)"], [], []), name
            elif typ == "azure-native:compute:VirtualMachineExtension":
                # a protected setting of its own (the script decrypts it), never inside commandToExecute
                assert found == (["/protectedSettings/adminPassword (secret)"], [], []), name
                assert "commandToExecute" not in inputs["settings"]
            else:
                assert found == ([], [], []), (typ, name)
        assert PASSWORD not in json.dumps(out) and powershell.b64(PASSWORD) not in json.dumps(out)
    return _deploy(_spec(azure_spec, nodes=2), check, mocks)


@pulumi.runtime.test
def test_tags_on_every_taggable_resource(azure_spec: ClusterSpec) -> pulumi.Output[None]:
    def check(created: list[tuple[str, str, dict[str, Any], bool]], _: dict[str, Any]) -> None:
        for typ, name, inputs, custom in created:
            if custom and typ not in UNTAGGABLE:
                assert inputs.get("tags") == {"project": "cfd-regression", "mpicloud-cluster": "winmpi"}, (typ, name)
    return _deploy(_spec(azure_spec, nodes=2, azure={"public_ip": "head_nat"}), check)


@pulumi.runtime.test
def test_bootstrap_is_user_data_and_an_update_does_not_replace_nodes(azure_spec: ClusterSpec) -> pulumi.Output[None]:
    mocks = Mocks()
    spec = _spec(azure_spec, nodes=2)
    script = windows_bootstrap.bootstrap_ps1(spec)

    def check(created: list[tuple[str, str, dict[str, Any], bool]], _: dict[str, Any]) -> None:
        vms = {n: i for t, n, i, _ in created if t == "azure-native:compute:VirtualMachine"}
        exts = [i for t, _, i, _ in created if t == "azure-native:compute:VirtualMachineExtension"]
        for name, vm in vms.items():
            assert vm["userData"] == powershell.user_data(script) and "customData" not in vm["osProfile"]
            assert vm["vmName"] == f"winmpi-{name}" and vm["osProfile"]["computerName"] == name
            assert mocks.options[name].ignore_changes == VM_IGNORED
        assert VM_IGNORED == ["osProfile.adminPassword", "osProfile.customData", "storageProfile.imageReference"]
        assert all(e["forceUpdateTag"] == powershell.force_update_tag(script) for e in exts)
        sha = windows_bootstrap.script_sha256(script)
        assert all(sha in plain(e["protectedSettings"])["commandToExecute"] for e in exts)
    return _deploy(spec, check, mocks)


@pulumi.runtime.test
def test_deallocate_role_has_exactly_two_actions_and_only_n0_an_identity(azure_spec: ClusterSpec
                                                                        ) -> pulumi.Output[None]:
    def check(created: list[tuple[str, str, dict[str, Any], bool]], _: dict[str, Any]) -> None:
        role = next(i for t, _, i, _ in created if t == "azure-native:authorization:RoleDefinition")
        assert role["permissions"] == [{"actions": ["Microsoft.Compute/virtualMachines/read",
                                                    "Microsoft.Compute/virtualMachines/deallocate/action"],
                                        "notActions": []}]
        assert role["roleType"] == "CustomRole"
        assert role["assignableScopes"] == [role["scope"]] == ["/subscriptions/sub/resourceGroups/winmpi-rg"]
        assignments = [i for t, _, i, _ in created if t == "azure-native:authorization:RoleAssignment"]
        assert len(assignments) == 3 and all(a["roleDefinitionId"].endswith("winmpi-deallocate-role")
                                             for a in assignments)
        assert "9980e02c" not in json.dumps(created)
        vms = {n: i for t, n, i, _ in created if t == "azure-native:compute:VirtualMachine"}
        assert {n for n, v in vms.items() if v.get("identity")} == {"N0"}
        assert all(a["principalId"] == "principal-N0" for a in assignments)
    return _deploy(_spec(azure_spec, nodes=3), check)


@pulumi.runtime.test
def test_without_idle_shutdown_no_identity_and_no_role(azure_spec: ClusterSpec) -> pulumi.Output[None]:
    doc = azure_spec.model_dump(mode="json", exclude_none=True)
    doc.pop("idle_shutdown_minutes", None)

    def check(created: list[tuple[str, str, dict[str, Any], bool]], _: dict[str, Any]) -> None:
        types = {t for t, *_ in created}
        assert not {"azure-native:authorization:RoleDefinition", "azure-native:authorization:RoleAssignment"} & types
        assert not [i for t, _, i, _ in created if t == "azure-native:compute:VirtualMachine" and i.get("identity")]
    return _deploy(spec_from_dict(doc), check)


@pytest.mark.parametrize(("size", "disk"), [("Standard_D4s_v5", "Premium_LRS"), ("Standard_D4_v5", "StandardSSD_LRS")])
@pulumi.runtime.test
def test_os_disk_and_patch_mode(azure_spec: ClusterSpec, size: str, disk: str) -> pulumi.Output[None]:
    def check(created: list[tuple[str, str, dict[str, Any], bool]], _: dict[str, Any]) -> None:
        vm = next(i for t, _, i, _ in created if t == "azure-native:compute:VirtualMachine")
        assert vm["storageProfile"]["osDisk"]["managedDisk"]["storageAccountType"] == disk
        config = vm["osProfile"]["windowsConfiguration"]
        assert config["patchSettings"] == {"patchMode": "Manual"} and config["enableAutomaticUpdates"] is False
    return _deploy(_spec(azure_spec, nodes=1, size=size), check)


@pulumi.runtime.test
def test_admin_password_is_the_stack_secret_not_an_env_var(azure_spec: ClusterSpec,
                                                            monkeypatch: pytest.MonkeyPatch) -> pulumi.Output[None]:
    monkeypatch.delenv("MPICLOUD_ADMIN_PASSWORD", raising=False)
    mocks = Mocks()
    pulumi.runtime.set_mocks(mocks, preview=False)
    pulumi.runtime.set_all_config({"mpicloud:adminPassword": PASSWORD}, ["mpicloud:adminPassword"])
    try:
        cluster = azure_mpi.deploy(_spec(azure_spec, nodes=1))
    finally:
        pulumi.runtime.set_all_config({}, [])

    def check(_: Any) -> None:
        ext = next(i for t, _, i in mocks.raw if t == "azure-native:compute:VirtualMachineExtension")
        assert _paths(ext, PASSWORD) == ["/protectedSettings/adminPassword (secret)"]
    return cluster.nodes.nodes[0].extension.id.apply(check)


@pytest.mark.parametrize(("admin", "azure", "key", "password_ssh"), [
    ({"ssh_public_key": PUBKEY}, {"password_ssh": False}, powershell.b64(PUBKEY), "0"),
    ({}, {}, powershell.NO_KEY, "1")], ids=["key-only", "password-only"])
@pulumi.runtime.test
def test_the_key_and_the_password_ssh_switch_reach_every_bootstrap(azure_spec: ClusterSpec, admin: dict[str, Any],
                                                                   azure: dict[str, Any], key: str,
                                                                   password_ssh: str) -> pulumi.Output[None]:
    spec = _spec(azure_spec, nodes=2, admin=admin, azure=azure)

    def check(created: list[tuple[str, str, dict[str, Any], bool]], _: dict[str, Any]) -> None:
        exts = [i for t, _, i, _ in created if t == "azure-native:compute:VirtualMachineExtension"]
        assert len(exts) == 2
        for ext in exts:
            command = plain(ext["protectedSettings"])["commandToExecute"]
            assert f" -AdminKeyB64 {key} " in command and f" -PasswordSsh {password_ssh}" in command
    return _deploy(spec, check)


@pulumi.runtime.test
def test_blob_container_grant_is_two_conditional_assignments_for_the_head(azure_spec: ClusterSpec
                                                                         ) -> pulumi.Output[None]:
    doc = azure_spec.model_dump(mode="json", exclude_none=True)
    doc.pop("idle_shutdown_minutes", None)
    doc["bucket"] = {"kind": "azure_blob", "account": "simdata", "container": "runs", "resource_group": "data-rg"}

    def check(created: list[tuple[str, str, dict[str, Any], bool]], outputs: dict[str, Any]) -> None:
        assignments = [i for t, _, i, _ in created if t == "azure-native:authorization:RoleAssignment"]
        scope = "/subscriptions/sub/resourceGroups/data-rg/providers/Microsoft.Storage/storageAccounts/simdata/" \
                "blobServices/default/containers/runs"
        assert {(a["scope"], a["roleDefinitionId"].rsplit("/", 1)[-1], a["conditionVersion"])
                for a in assignments} == {(scope, blobaccess.READER_ROLE, "2.0"), (scope, blobaccess.CONTRIBUTOR_ROLE,
                                                                                 "2.0")}
        container = spec_from_dict(doc).blob_container
        assert container is not None
        assert sorted(a["condition"] for a in assignments) == sorted(
            a["condition"] for a in blobaccess.role_assignments(container))
        assert all(a["principalId"] == "principal-N0" for a in assignments)
        vms = {n: i for t, n, i, _ in created if t == "azure-native:compute:VirtualMachine"}
        assert {n for n, v in vms.items() if v.get("identity")} == {"N0"}  # the head only, though idle is off
        assert outputs["head_principal_id"] == "principal-N0"
        assert not [t for t, *_ in created if t == "azure-native:authorization:RoleDefinition"]
    return _deploy(spec_from_dict(doc), check)


@pulumi.runtime.test
def test_infiniband_driver_only_on_rdma_sizes(azure_spec: ClusterSpec) -> pulumi.Output[None]:
    def check(created: list[tuple[str, str, dict[str, Any], bool]], out: dict[str, Any]) -> None:
        drivers = [i for t, _, i, _ in created if t == "azure-native:compute:VirtualMachineExtension"
                   and i["type"] == "InfiniBandDriverWindows"]
        assert len(drivers) == 2 and all(d["publisher"] == "Microsoft.HpcCompute" for d in drivers)
    return _deploy(_spec(azure_spec, nodes=2, size="Standard_HB120rs_v3", azure={"rdma": True}), check)


@pytest.mark.parametrize("example", ["azure-windows-elastic.yaml", "azure-linux-elastic.yaml",
                                     "azure-linux-elastic-slurm.yaml"])
@pulumi.runtime.test
def test_elastic_head_role_is_exactly_the_node_actions_on_the_compute_vms(example: str) -> pulumi.Output[None]:
    """Every compute VM is created; the head's custom role holds ELASTIC_ACTIONS only and is assigned on each compute
    VM, never on the head or the group; names are the nodes' (a second `pulumi up` updates, not replaces)."""
    from mpicloud.render.azure import ELASTIC_ACTIONS
    from mpicloud.spec import load_spec

    spec = load_spec(Path(__file__).resolve().parents[2] / "examples" / example)
    prefix, count = spec.target.platform.node_prefix, spec.node_count

    def check(created: list[tuple[str, str, dict[str, Any], bool]], _: dict[str, Any]) -> None:
        vms = {n: i for t, n, i, _ in created if t == "azure-native:compute:VirtualMachine"}
        assert sorted(vms) == sorted(f"{prefix}{i}" for i in range(count))
        assert {i["vmName"] for i in vms.values()} == {f"{spec.name}-{prefix}{i}" for i in range(count)}
        roles = {n: i for t, n, i, _ in created if t == "azure-native:authorization:RoleDefinition"}
        assert set(roles) == {f"{spec.name}-elastic-role"}  # no idle shutdown in these examples
        role = roles[f"{spec.name}-elastic-role"]
        assert role["permissions"] == [{"actions": list(ELASTIC_ACTIONS), "notActions": []}]
        assert role["assignableScopes"] == [role["scope"]] == [f"/subscriptions/sub/resourceGroups/{spec.name}-rg"]
        elastic = [i for t, n, i, _ in created if t == "azure-native:authorization:RoleAssignment"
                   and n.endswith("-elastic")]
        assert sorted(a["scope"] for a in elastic) == sorted(
            f"/subscriptions/sub/resourceGroups/rg/x/{prefix}{i}" for i in range(1, count))  # the compute VMs' ids
        assert all(a["roleDefinitionId"].endswith(f"{spec.name}-elastic-role") and
                   a["principalId"] == f"principal-{prefix}0" for a in elastic)
        assert vms[f"{prefix}0"].get("identity") == {"type": "SystemAssigned"}
        if spec.scheduler == "slurm":  # the head alone runs slurmctld's power saving programs (sudoers rule)
            data = {n: gzip.decompress(base64.b64decode(v["osProfile"]["customData"])).decode() for n, v in vms.items()}
            assert data == {f"node{i}": cloud_init.cloud_config(spec, i) for i in range(count)}
            assert [n for n, text in data.items() if "/etc/sudoers.d/mpicloud-slurm-power" in text] == ["node0"]
            assert all("NodeName=node[1-@LAST@] NodeAddr=@ADDRS@ CPUs=@CPUS@ State=CLOUD" in t for t in data.values())
    return _deploy(spec, check)
