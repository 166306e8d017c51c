"""The AWS Pulumi program for a Windows cluster under mocks: counts for 1, 2 and 16 nodes, SSH and RDP only from the
allowed networks, the password only in a Secrets Manager secret the node role alone reads, tags, the bootstrap in
SSM and EC2Launch v2 user data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pulumi
import pytest
from pulumi.runtime import rpc

from mpicloud.render.aws import powershell
from mpicloud.render.windows_bootstrap import bootstrap_ps1
from mpicloud.spec import ClusterSpec, load_spec, spec_from_dict
from tests.cloud.test_aws_pulumi import UNTAGGABLE, Mocks, _of, program

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "Aws'Only\"Secret-77!"
Seen = list[tuple[str, str, dict[str, Any]]]


@pytest.fixture()
def spec(monkeypatch: pytest.MonkeyPatch) -> ClusterSpec:
    monkeypatch.setenv("MPICLOUD_ADMIN_PASSWORD", "not-this-one")  # the program takes the stack secret only
    return load_spec(ROOT / "examples" / "aws-windows.yaml")


def _sized(spec: ClusterSpec, nodes: int | None) -> ClusterSpec:
    return spec if nodes is None else spec_from_dict({**spec.model_dump(mode="json", exclude_none=True),
                                                      "nodes": nodes})


def _deployed(spec: ClusterSpec, nodes: int | None = None) -> tuple[Mocks, pulumi.Output[Any]]:
    spec = _sized(spec, nodes)
    mocks = Mocks()
    pulumi.runtime.set_mocks(mocks, preview=False)
    cluster = program.MpiCluster(spec.name, program.MpiClusterArgs(spec, PASSWORD))
    waited = [*cluster.nodes.instances, *cluster.nodes.runner_parts, *cluster.identity.policies]
    return mocks, pulumi.Output.all(*[r.id for r in waited], cluster.outputs["attach_command"])


def _holds(node: Any, text: str) -> bool:
    if isinstance(node, dict):
        return any(_holds(v, text) for v in node.values())
    if isinstance(node, list):
        return any(_holds(v, text) for v in node)
    return isinstance(node, str) and text in node


def _secret_wrapped(value: Any) -> bool:
    return isinstance(value, dict) and value.get(rpc._special_sig_key) == rpc._special_secret_sig


@pytest.mark.parametrize("nodes", [1, 2, 16])
@pulumi.runtime.test
def test_resource_counts(spec: ClusterSpec, nodes: int) -> pulumi.Output[Any]:
    mocks, done = _deployed(spec, nodes)

    def check(out: list[Any]) -> None:
        counts: dict[str, int] = {}
        for typ, _, _ in mocks.seen:
            counts[typ] = counts.get(typ, 0) + 1
        assert counts["aws:ec2/instance:Instance"] == nodes
        assert counts["aws:secretsmanager/secret:Secret"] == 1 and counts[
            "aws:secretsmanager/secretVersion:SecretVersion"] == 1
        assert "aws:ec2/keyPair:KeyPair" not in counts and "aws:ebs/volume:Volume" not in counts
        # the bootstrap lists every node's address: its SSM pieces are counted for the deployed node count
        assert counts["aws:ssm/parameter:Parameter"] == len(powershell.script_parameters(
            "", bootstrap_ps1(_sized(spec, nodes))))
        assert counts["aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"] == 3  # SSH, RDP, members
        assert out[-1].endswith("--os windows --slots 8 --password-env MPICLOUD_ADMIN_PASSWORD")
    return done.apply(check)


@pulumi.runtime.test
def test_ssh_and_rdp_only_from_the_allowed_networks(spec: ClusterSpec) -> pulumi.Output[Any]:
    mocks, done = _deployed(spec)

    def check(_: Any) -> None:
        rules = [r for r in _of(mocks.seen, "vpc/securityGroupIngressRule:SecurityGroupIngressRule")
                 if "cidrIpv4" in r or "cidrIpv6" in r]
        assert sorted((r["fromPort"], r["cidrIpv4"]) for r in rules) == [(22, "203.0.113.0/24"),
                                                                          (3389, "203.0.113.0/24")]
    return done.apply(check)


@pulumi.runtime.test
def test_the_password_is_only_in_the_secret_version(spec: ClusterSpec) -> pulumi.Output[Any]:
    mocks, done = _deployed(spec)

    def check(out: list[Any]) -> None:
        holders = [(t, n) for t, n, inputs in mocks.seen if _holds(inputs, PASSWORD)]
        assert [t for t, _ in holders] == ["aws:secretsmanager/secretVersion:SecretVersion"]
        (version,) = _of(mocks.seen, "secretsmanager/secretVersion:SecretVersion")
        assert _secret_wrapped(version["secretString"])
        assert all(PASSWORD not in str(o) for o in out)
        (secret,) = _of(mocks.seen, "secretsmanager/secret:Secret")
        assert "kmsKeyId" not in secret  # the deployment's key is the node role's alone: the deployer could not write
        policy = next(json.loads(p["policy"]) for p in _of(mocks.seen, "iam/rolePolicy:RolePolicy")
                      if "secretsmanager" in p["policy"])
        assert policy["Statement"] == [{"Sid": "AdminPassword", "Effect": "Allow",
                                        "Action": ["secretsmanager:GetSecretValue"],
                                        "Resource": "arn:aws:mock:::winaws-id-admin-password"}]
    return done.apply(check)


@pulumi.runtime.test
def test_nodes_boot_ec2launch_with_their_index_and_secret_tags(spec: ClusterSpec) -> pulumi.Output[Any]:
    mocks, done = _deployed(spec)

    def check(_: Any) -> None:
        instances = _of(mocks.seen, "ec2/instance:Instance")
        assert [n["tags"][powershell.TAG_INDEX] for n in instances] == ["0", "1", "2", "3"]
        assert all(n["tags"][powershell.TAG_SECRET] == "arn:aws:mock:::winaws-id-admin-password" for n in instances)
        assert all(n["userData"] == powershell.user_data(spec) and "userDataBase64" not in n for n in instances)
        assert all(n["metadataOptions"]["instanceMetadataTags"] == "enabled" for n in instances)
        for typ, name, inputs in mocks.seen:
            if typ.startswith("aws:") and typ not in UNTAGGABLE and "Rule" not in typ and "Version" not in typ \
                    and typ != "aws:index/provider:Provider":
                assert inputs.get("tags", {}).get("mpicloud:cluster") == "winaws", (typ, name)
    return done.apply(check)


@pulumi.runtime.test
def test_elastic_cluster_is_the_head_and_a_windows_launch_template(monkeypatch: pytest.MonkeyPatch) -> pulumi.Output[
        Any]:
    """The same resources and head policy as templates/cloudformation/windows-cluster-elastic.json."""
    import base64

    from mpicloud.render.aws.cfn_windows import ROOT_DEVICE
    from mpicloud.render.elastic_iam import node_actions_policy
    from tests.cloud.test_aws_pulumi import ACCOUNT

    monkeypatch.setenv("MPICLOUD_ADMIN_PASSWORD", "not-this-one")
    spec = load_spec(ROOT / "examples" / "aws-windows-elastic.yaml")
    mocks = Mocks()
    pulumi.runtime.set_mocks(mocks, preview=False)
    cluster = program.MpiCluster(spec.name, program.MpiClusterArgs(spec, PASSWORD))
    assert cluster.nodes.launch_template is not None
    waited = [*cluster.nodes.instances, cluster.nodes.launch_template, *cluster.identity.policies]

    def check(_: Any) -> None:
        (head,) = _of(mocks.seen, "ec2/instance:Instance")
        assert head["iamInstanceProfile"] == "winburst-id-head-profile"
        assert head["tags"]["mpicloud:launch-template"] == "winburst-nodes-compute_id"
        assert head["tags"][powershell.TAG_INDEX] == "0" and head["tags"]["mpicloud:nodes"] == "9"
        (template,) = _of(mocks.seen, "ec2/launchTemplate:LaunchTemplate")
        assert template["iamInstanceProfile"] == {"name": "winburst-id-profile"} and "keyName" not in template
        assert template["blockDeviceMappings"][0]["deviceName"] == ROOT_DEVICE
        assert base64.b64decode(template["userData"]).decode() == powershell.user_data(spec) == head["userData"]
        tags = {t["resourceType"]: t["tags"] for t in template["tagSpecifications"]}["instance"]
        assert tags[powershell.TAG_SECRET] == "arn:aws:mock:::winburst-id-admin-password"
        assert powershell.TAG_INDEX not in tags and tags["mpicloud:nodes"] == "9"
        assert not any(_holds(inputs, PASSWORD) for t, _, inputs in mocks.seen
                       if t != "aws:secretsmanager/secretVersion:SecretVersion")
        attached = {n: p for t, n, p in mocks.seen if t == "aws:iam/rolePolicy:RolePolicy"}
        assert attached["winburst-id-head-node-actions"]["role"] == "winburst-id-head-role_id"
        assert json.loads(attached["winburst-id-head-node-actions"]["policy"]) == node_actions_policy(
            "winburst", "eu-west-1", ACCOUNT, "winburst-nodes-compute_id", "arn:aws:mock:::winburst-id-role")
        # the head reads the administrator password as the nodes do; only it acts on nodes
        assert attached["winburst-id-head-admin-password"]["policy"] == attached["winburst-id-admin-password"][
            "policy"]
        assert not any("ec2:" in p["policy"] for n, p in attached.items() if "-head-" not in n)
    return pulumi.Output.all(*[r.id for r in waited]).apply(check)
