"""The Azure Pulumi program for a Linux cluster under mocks: resource counts, SSH only from the allowed networks, no
password or secret anywhere, the vault and its roles, tags, custom data and RDMA settings."""

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
import yaml

from mpicloud.render import azure
from mpicloud.render.azure import cloud_init
from mpicloud.spec import ClusterSpec, load_spec, spec_from_dict
from tests.cloud.test_azure_pulumi import UNTAGGABLE, Mocks, _count, _secret

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "infra"))
from azure_mpi import MpiCluster, MpiClusterArgs
from azure_mpi.nodes import VM_IGNORED

ROOT = Path(__file__).resolve().parents[2]
Created = list[tuple[str, str, dict[str, Any], bool]]


@pytest.fixture(scope="module")
def hpc() -> ClusterSpec:
    return load_spec(ROOT / "examples" / "azure-linux.yaml")


def _spec(base: ClusterSpec, **changes: Any) -> ClusterSpec:
    return spec_from_dict({**base.model_dump(mode="json", exclude_none=True), **changes})


def _deploy(spec: ClusterSpec, check: Callable[[Created, dict[str, Any], Mocks], None]) -> pulumi.Output[None]:
    mocks = Mocks()
    pulumi.runtime.set_mocks(mocks, preview=False)
    cluster = MpiCluster(spec.name, MpiClusterArgs(spec=spec), pulumi.ResourceOptions(transformations=[mocks.record]))
    # the role assignments wait for the identities: the check waits for them too
    roles = [n.vault_role.id for n in cluster.nodes.nodes] + \
        [r.id for r in cluster.nodes.deallocate_roles + cluster.nodes.elastic_roles]
    return pulumi.Output.all(cluster.outputs(), *roles).apply(lambda out: check(mocks.created, out[0], mocks))


def _of(created: Created, typ: str) -> list[dict[str, Any]]:
    return [inputs for t, _, inputs, _ in created if t == f"azure-native:{typ}"]


@pytest.mark.parametrize("nodes", [1, 2, 16])
@pulumi.runtime.test
def test_resource_counts(hpc: ClusterSpec, nodes: int) -> pulumi.Output[None]:
    def check(created: Created, out: dict[str, Any], _: Mocks) -> None:
        assert _count(created) == {
            "mpicloud:azure:MpiCluster": 1, "mpicloud:azure:Network": 1, "mpicloud:azure:Nodes": 1,
            "mpicloud:azure:Node": nodes, "azure-native:resources:ResourceGroup": 1,
            "azure-native:network:NetworkSecurityGroup": 1, "azure-native:network:VirtualNetwork": 1,
            "azure-native:compute:ProximityPlacementGroup": 1, "azure-native:network:PublicIPAddress": nodes,
            "azure-native:network:NetworkInterface": nodes, "azure-native:compute:VirtualMachine": nodes,
            "azure-native:keyvault:Vault": 1, "azure-native:authorization:RoleDefinition": 1,
            "azure-native:authorization:RoleAssignment": 2 * nodes}
        vms = _of(created, "compute:VirtualMachine")
        assert sorted(v["osProfile"]["computerName"] for v in vms) == sorted(f"node{i}" for i in range(nodes))
        assert out["attach_command"] == hpc.target.attach_command("hpcmpi", out["public_ips"][0], "mpiadmin", 120)
        assert "get-boot-log" in out["host_key_fingerprints"]
    return _deploy(_spec(hpc, nodes=nodes), check)


@pulumi.runtime.test
def test_ssh_only_from_the_allowed_networks_and_keys_only(hpc: ClusterSpec) -> pulumi.Output[None]:
    def check(created: Created, out: dict[str, Any], _: Mocks) -> None:
        rules = _of(created, "network:NetworkSecurityGroup")[0]["securityRules"]
        assert [(r["destinationPortRange"], r["sourceAddressPrefixes"]) for r in rules] == [
            ("22", ["203.0.113.0/24"])]
        for vm in _of(created, "compute:VirtualMachine"):
            profile = vm["osProfile"]
            assert "adminPassword" not in profile and profile["linuxConfiguration"][
                "disablePasswordAuthentication"] is True
            assert profile["linuxConfiguration"]["ssh"]["publicKeys"][0]["keyData"] == hpc.admin.ssh_public_key
    return _deploy(hpc, check)


@pulumi.runtime.test
def test_no_secret_anywhere_and_custom_data_is_the_rendered_one(hpc: ClusterSpec) -> pulumi.Output[None]:
    def check(created: Created, out: dict[str, Any], mocks: Mocks) -> None:
        assert not any(_secret(v) for _, _, raw in mocks.raw for v in raw.values())  # nothing to hide: no secrets
        assert "password" not in json.dumps([i for _, _, i, _ in created]).lower().replace(
            "disablepasswordauthentication", "")
        vms = sorted(_of(created, "compute:VirtualMachine"), key=lambda v: v["osProfile"]["computerName"])
        for index, vm in enumerate(vms):
            data = gzip.decompress(base64.b64decode(vm["osProfile"]["customData"])).decode()
            assert data == cloud_init.cloud_config(hpc, index)
            assert yaml.safe_load(data).get("hostname") == f"node{index}"
            assert vm["userData"] == cloud_init.runner_user_data()
        assert {"osProfile.customData", "storageProfile.imageReference"} <= set(VM_IGNORED)
    return _deploy(hpc, check)


@pulumi.runtime.test
def test_vault_is_private_and_each_identity_gets_only_its_role(hpc: ClusterSpec) -> pulumi.Output[None]:
    def check(created: Created, out: dict[str, Any], _: Mocks) -> None:
        vault = _of(created, "keyvault:Vault")[0]
        props = vault["properties"]
        assert props["enableRbacAuthorization"] is True and props["networkAcls"]["defaultAction"] == "Deny"
        assert len(vault["vaultName"]) <= 24 and vault["vaultName"].startswith("mpi")
        subnet = _of(created, "network:VirtualNetwork")[0]["subnets"][0]
        assert subnet["serviceEndpoints"] == [{"service": "Microsoft.KeyVault"}]
        roles = [(n, i) for t, n, i, _ in created if t == "azure-native:authorization:RoleAssignment"
                 and n.endswith("-vault")]
        assert sorted((n, i["roleDefinitionId"].rsplit("/", 1)[-1]) for n, i in roles) == [
            ("node0-vault", azure.SECRETS_OFFICER), ("node1-vault", azure.SECRETS_USER),
            ("node2-vault", azure.SECRETS_USER), ("node3-vault", azure.SECRETS_USER)]
        assert all(i["principalId"] == f"principal-{n.removesuffix('-vault')}" for n, i in roles)
        assert all(v["identity"]["type"] == "SystemAssigned" for v in _of(created, "compute:VirtualMachine"))
    return _deploy(hpc, check)


@pulumi.runtime.test
def test_tags_on_everything_and_the_nodes_read_theirs(hpc: ClusterSpec) -> pulumi.Output[None]:
    def check(created: Created, out: dict[str, Any], _: Mocks) -> None:
        for typ, name, inputs, custom in created:
            if custom and typ not in UNTAGGABLE:
                assert inputs["tags"]["mpicloud-cluster"] == "hpcmpi", (typ, name)
        vm = _of(created, "compute:VirtualMachine")[0]
        assert {k: vm["tags"][k] for k in ("mpicloud:nodes", "mpicloud:slots", "mpicloud:idle-minutes")} == \
            {"mpicloud:nodes": "4", "mpicloud:slots": "120", "mpicloud:idle-minutes": "60"}
        assert vm["tags"]["mpicloud:vault"] and vm["tags"]["mpicloud:arm"] == "https://management.azure.com/"
    return _deploy(hpc, check)


@pulumi.runtime.test
def test_rdma_sizes_get_the_hpc_image_and_no_extension(hpc: ClusterSpec) -> pulumi.Output[None]:
    """Linux InfiniBand comes with the HPC image's drivers (cluster-files.sh picks UCX when it sees the device):
    no driver extension on Linux, the plain image on plain sizes."""
    plain = _spec(hpc, size="Standard_D4s_v5", azure={"linux_image": "ubuntu"}, nodes=2)

    def check(created: Created, out: dict[str, Any], _: Mocks) -> None:
        images = {v["storageProfile"]["imageReference"]["offer"] for v in _of(created, "compute:VirtualMachine")}
        assert images == {"0001-com-ubuntu-server-jammy"}
        assert not _of(created, "compute:VirtualMachineExtension")
    assert cloud_init.image_reference(hpc)["offer"] == "ubuntu-hpc"
    return _deploy(plain, check)
