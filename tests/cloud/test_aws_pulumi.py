"""infra/aws under Pulumi mocks: placement group, IMDSv2, SG exposure, tags, no secret in user data, node count,
one region for everything, pinned image and user data, the shared volume, per-deployment secrets, EFA.

Mocks are installed per test (the `seen` fixture), never at import, so the order of test files does not matter."""

from __future__ import annotations

import base64
import fnmatch
import gzip
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pulumi
import pytest
import yaml
from parliament import analyze_policy_string

from mpicloud.render.aws import TAG_NODES
from mpicloud.render.aws.cloud_init import cloud_config, runner_parameters
from mpicloud.render.elastic_iam import node_actions_policy
from mpicloud.render.iam import bucket_access_policy
from mpicloud.render.iam_check import evaluate
from mpicloud.spec import ClusterSpec
from tests.specdata import aws_spec

ROOT = Path(__file__).resolve().parents[2]
ACCOUNT = "123456789012"
#: resource types that carry no tags in AWS (rules, policies, associations, attachments; a volume attachment is
#: registered once its instance exists, so the check sees it or not depending on timing)
UNTAGGABLE = {"aws:iam/rolePolicy:RolePolicy", "aws:ec2/routeTableAssociation:RouteTableAssociation",
              "aws:ec2/volumeAttachment:VolumeAttachment"}


class Mocks(pulumi.runtime.Mocks):
    """Records every resource; adds what AWS would compute (names, ARNs, addresses); answers the invokes."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, dict[str, Any]]] = []
        self.providers: dict[str, str] = {}  # resource name -> its provider reference (URN::id)
        self.invokes: list[tuple[str, str | None]] = []  # (token, provider) of every invoke

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        self.seen.append((args.typ, args.name, dict(args.inputs)))
        self.providers[args.name] = args.provider
        state = dict(args.inputs)
        state.setdefault("name", args.name)
        state.setdefault("keyName", args.name)
        state["arn"] = f"arn:aws:mock:::{args.name}"
        if args.typ == "aws:ec2/instance:Instance":
            state["publicIp"] = f"198.51.100.{len(self.seen)}"
            state.setdefault("privateIp", args.inputs.get("privateIp", "10.0.0.99"))
        if args.typ == "aws:ec2/eip:Eip":
            state["publicIp"] = f"203.0.113.{len(self.seen)}"
        if args.typ == "aws:kms/key:Key":
            state["keyId"], state["arn"] = KEY_ID, KEY_ARN
        return f"{args.name}_id", state

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict[str, Any]:
        self.invokes.append((args.token, args.provider))
        answers: dict[str, dict[str, Any]] = {
            "aws:ec2/getSubnet:getSubnet": {"id": "subnet-1", "availabilityZone": "eu-west-1b"},
            "aws:ssm/getParameter:getParameter": {"value": "ami-0123456789abcdef0", "name": "x", "type": "String"},
            "aws:index/getCallerIdentity:getCallerIdentity": {"accountId": ACCOUNT, "arn": "x", "userId": "x"},
            "aws:index/getPartition:getPartition": {"partition": "aws", "dnsSuffix": "amazonaws.com"},
            "aws:index/getAvailabilityZones:getAvailabilityZones": {"names": ["eu-west-1a"], "zoneIds": ["z"]},
        }
        return answers.get(args.token, {})


sys.path.insert(0, str(ROOT / "infra"))
import aws as program  # noqa: E402  - the Pulumi program (mocks are installed per test below)
from aws.nodes import INSTANCE_IGNORED  # noqa: E402

KEY_ID = "1234abcd-12ab-34cd-56ef-1234567890ab"
KEY_ARN = f"arn:aws:kms:eu-west-1:{ACCOUNT}:key/{KEY_ID}"
PREFIX = f"/mpicloud/demo/{KEY_ID}"


@pytest.fixture()
def mocks() -> Iterator[Mocks]:
    """Fresh mocks for this test only (another file's set_mocks cannot leak in, nor ours out)."""
    fresh = Mocks()
    pulumi.runtime.set_mocks(fresh, preview=False)
    yield fresh


@pytest.fixture()
def seen(mocks: Mocks) -> list[tuple[str, str, dict[str, Any]]]:
    return mocks.seen


def _of(seen: list[tuple[str, str, dict[str, Any]]], typ: str) -> list[dict[str, Any]]:
    """Inputs of every resource of one type, ordered by resource name (registration order is not fixed)."""
    return [inputs for t, _, inputs in sorted(seen, key=lambda r: r[1]) if t == f"aws:{typ}"]


def _deployed(spec: ClusterSpec) -> pulumi.Output[Any]:
    cluster = program.MpiCluster(spec.name, program.MpiClusterArgs(spec))
    waited = [*cluster.nodes.instances, *cluster.nodes.addresses, *cluster.nodes.runner_parts,
              *cluster.identity.policies]
    return pulumi.Output.all(*[r.id for r in waited], cluster.outputs["ssh_command"])


@pulumi.runtime.test
def test_nodes_in_placement_group_with_imdsv2_encryption_and_fixed_ips(seen: list[Any]) -> pulumi.Output[Any]:
    spec = aws_spec()

    def check(_: Any) -> None:
        instances = _of(seen, "ec2/instance:Instance")
        assert len(instances) == spec.node_count
        (group,) = _of(seen, "ec2/placementGroup:PlacementGroup")
        assert group["strategy"] == "cluster"
        for i, node in enumerate(instances):
            assert node["placementGroup"] == "demo-nodes-pg"  # the name (mock state), not the id "..._id"
            assert node["metadataOptions"]["httpTokens"] == "required"
            assert node["metadataOptions"]["instanceMetadataTags"] == "enabled"
            assert node["rootBlockDevice"] == {"encrypted": True, "volumeSize": 30, "volumeType": "gp3",
                                               "tags": {"project": "mpicloud-test", "mpicloud:cluster": "demo"}}
            assert node["privateIp"] == f"10.0.0.{10 + i}" and node["ami"] == "ami-0123456789abcdef0"
            assert node["tags"][TAG_NODES] == "3" and node["iamInstanceProfile"]
            assert "volumeTags" not in node  # it would fight the shared volume's own tags
            text = gzip.decompress(base64.b64decode(node["userDataBase64"])).decode()
            assert text == cloud_config(spec, i)
            assert "PRIVATE KEY-----" not in text
        # `value` is a secret output in pulumi-aws, so the mock sees it wrapped: {<secret sig>: ..., "value": ...}
        stored = {p["name"]: p["value"]["value"] for p in _of(seen, "ssm/parameter:Parameter")}
        assert stored == runner_parameters(PREFIX)
        (key,) = _of(seen, "ec2/keyPair:KeyPair")
        assert key["publicKey"] == spec.admin.ssh_public_key
    return _deployed(spec).apply(check)


@pulumi.runtime.test
def test_ssh_only_from_allowed_cidrs_and_all_traffic_among_members(seen: list[Any]) -> pulumi.Output[Any]:
    spec = aws_spec(access={"allowed_cidrs": ["203.0.113.0/24", "2001:db8::/32"]})

    def check(_: Any) -> None:
        rules = _of(seen, "vpc/securityGroupIngressRule:SecurityGroupIngressRule")
        outside = [r for r in rules if "referencedSecurityGroupId" not in r]
        assert sorted((r.get("cidrIpv4") or r.get("cidrIpv6"), r["fromPort"], r["toPort"], r["ipProtocol"])
                      for r in outside) == [("2001:db8::/32", 22, 22, "tcp"), ("203.0.113.0/24", 22, 22, "tcp")]
        (member,) = [r for r in rules if "referencedSecurityGroupId" in r]
        assert member["referencedSecurityGroupId"] == member["securityGroupId"] and member["ipProtocol"] == "-1"
        assert all("0.0.0.0/0" not in json.dumps(r) for r in rules)
    return _deployed(spec).apply(check)


@pulumi.runtime.test
def test_every_taggable_resource_is_tagged(seen: list[Any]) -> pulumi.Output[Any]:
    def check(_: Any) -> None:
        resources = [(t, n, i) for t, n, i in seen if t.startswith("aws:") and t not in UNTAGGABLE]
        assert len(resources) > 10
        for typ, name, inputs in resources:
            assert inputs.get("tags", {}).get("mpicloud:cluster") == "demo", (typ, name)
            assert inputs["tags"]["project"] == "mpicloud-test", (typ, name)
    return _deployed(aws_spec()).apply(check)


@pulumi.runtime.test
def test_role_carries_bucket_policy_and_secrets_path(seen: list[Any]) -> pulumi.Output[Any]:
    spec = aws_spec()

    def check(_: Any) -> None:
        policies = [json.loads(p["policy"]) for p in _of(seen, "iam/rolePolicy:RolePolicy")]
        assert bucket_access_policy(spec.bucket) in policies  # type: ignore[arg-type]
        secrets = next(p for p in policies if p["Statement"][0]["Sid"] == "ClusterSecrets")
        assert secrets["Statement"][0]["Resource"] == f"arn:aws:ssm:eu-west-1:{ACCOUNT}:parameter{PREFIX}/*"
        for policy in policies:  # parliament: known actions, resources that fit them
            assert [f.issue for f in analyze_policy_string(json.dumps(policy)).findings] == []
    return _deployed(spec).apply(check)


@pulumi.runtime.test
def test_other_grants_get_no_bucket_policy(seen: list[Any]) -> pulumi.Output[Any]:
    spec = aws_spec(bucket={"name": "my-simulation-data", "grant": "iam_user"})

    def check(_: Any) -> None:
        policies = [json.loads(p["policy"]) for p in _of(seen, "iam/rolePolicy:RolePolicy")]
        assert [p["Statement"][0]["Sid"] for p in policies] == ["ClusterSecrets"]
    return _deployed(spec).apply(check)


@pulumi.runtime.test
def test_cross_account_grant_may_only_assume_the_bucket_role(seen: list[Any]) -> pulumi.Output[Any]:
    role_arn = "arn:aws:iam::111122223333:role/sim-data-access"
    spec = aws_spec(bucket={"name": "my-simulation-data", "grant": "cross_account_role", "role_arn": role_arn,
                            "external_id": "ext-7f3a", "trusted_account_id": "444455556666"})

    def check(_: Any) -> None:
        policies = {p["Statement"][0]["Sid"]: p for p in
                    (json.loads(r["policy"]) for r in _of(seen, "iam/rolePolicy:RolePolicy"))}
        assert set(policies) == {"ClusterSecrets", "AssumeBucketRole"}
        assert policies["AssumeBucketRole"]["Statement"] == [
            {"Sid": "AssumeBucketRole", "Effect": "Allow", "Action": "sts:AssumeRole", "Resource": role_arn}]
    return _deployed(spec).apply(check)


@pulumi.runtime.test
def test_existing_network_efa_and_single_node(seen: list[Any]) -> pulumi.Output[Any]:
    spec = aws_spec(nodes=1, size="c5n.18xlarge", aws={
        "vpc_id": "vpc-1", "subnet_id": "subnet-1", "subnet_cidr": "172.31.5.0/24", "efa": True,
        "placement_group": False, "key_name": "mine"})

    def check(_: Any) -> None:
        assert not _of(seen, "ec2/vpc:Vpc") and not _of(seen, "ec2/keyPair:KeyPair")
        assert not _of(seen, "ec2/placementGroup:PlacementGroup")
        (eni,) = _of(seen, "ec2/networkInterface:NetworkInterface")
        assert eni["interfaceType"] == "efa" and eni["privateIps"] == ["172.31.5.10"]
        assert eni["subnetId"] == "subnet-1"
        (node,) = _of(seen, "ec2/instance:Instance")
        assert node["keyName"] == "mine" and node["networkInterfaces"][0]["deviceIndex"] == 0
        assert len(_of(seen, "ec2/eip:Eip")) == 1
    return _deployed(spec).apply(check)


def test_no_allowed_cidrs_is_refused() -> None:
    pulumi.runtime.set_mocks(Mocks(), preview=False)
    with pytest.raises(pulumi.RunError, match="allowed_cidrs"):
        program.MpiCluster("x", program.MpiClusterArgs(aws_spec(access={"allowed_cidrs": []})))


def _provider_of(mocks: Mocks, name: str) -> str:
    """The provider resource name a resource was registered with (its reference is URN::id)."""
    return mocks.providers[name].split("::")[-2] if mocks.providers.get(name) else ""


@pytest.mark.parametrize("network", [{"vpc_id": "vpc-1", "subnet_id": "subnet-1"}, {}], ids=["existing", "new"])
@pulumi.runtime.test
def test_every_resource_and_invoke_uses_the_provider_of_spec_region(mocks: Mocks,
                                                                    network: dict[str, str]) -> pulumi.Output[Any]:
    spec = aws_spec(aws=network)

    def check(_: Any) -> None:
        (provider,) = [(n, i) for t, n, i in mocks.seen if t == "pulumi:providers:aws"]
        assert provider[1]["region"] == spec.region == "eu-west-1"
        custom = [n for t, n, _ in mocks.seen if t.startswith("aws:")]
        assert len(custom) > 10
        assert {n: _provider_of(mocks, n) for n in custom} == {n: provider[0] for n in custom}
        assert mocks.invokes and all(p and p.split("::")[-2] == provider[0] for _, p in mocks.invokes), mocks.invokes
    return _deployed(spec).apply(check)


@pulumi.runtime.test
def test_image_and_user_data_are_pinned_on_updates(mocks: Mocks) -> pulumi.Output[Any]:
    spec = aws_spec()
    options: dict[str, pulumi.ResourceOptions] = {}

    def record(args: pulumi.ResourceTransformationArgs) -> None:
        options[args.name] = args.opts

    cluster = program.MpiCluster(spec.name, program.MpiClusterArgs(spec), pulumi.ResourceOptions(
        transformations=[record]))

    def check(out: list[Any]) -> None:
        names = [n for t, n, _ in mocks.seen if t == "aws:ec2/instance:Instance"]
        assert len(names) == 3 and all(options[n].ignore_changes == INSTANCE_IGNORED for n in names)
        assert INSTANCE_IGNORED == ["ami", "userData", "userDataBase64"]
        assert out[-1] == "ami-0123456789abcdef0"  # exported, so `aws.ami` can pin it in the spec
    return pulumi.Output.all(*[n.id for n in cluster.nodes.instances], cluster.outputs["ami"]).apply(check)


@pulumi.runtime.test
def test_a_pinned_ami_is_used_without_a_lookup(mocks: Mocks) -> pulumi.Output[Any]:
    spec = aws_spec(aws={"ami": "ami-0fedcba9876543210"})

    def check(_: Any) -> None:
        assert {n["ami"] for n in _of(mocks.seen, "ec2/instance:Instance")} == {"ami-0fedcba9876543210"}
        assert "aws:ssm/getParameter:getParameter" not in {t for t, _ in mocks.invokes}
    return _deployed(spec).apply(check)


@pulumi.runtime.test
def test_shared_directory_is_its_own_retained_volume_on_the_head(mocks: Mocks) -> pulumi.Output[Any]:
    spec = aws_spec()
    options: dict[str, pulumi.ResourceOptions] = {}
    cluster = program.MpiCluster(spec.name, program.MpiClusterArgs(spec), pulumi.ResourceOptions(
        transformations=[lambda a: options.__setitem__(a.name, a.opts)]))

    def check(_: Any) -> None:
        (volume,) = _of(mocks.seen, "ebs/volume:Volume")
        assert volume["encrypted"] is True and volume["size"] == 100 and volume["type"] == "gp3"
        assert volume["availabilityZone"] == "eu-west-1a"  # the subnet's zone
        assert options["demo-nodes-shared"].retain_on_delete is True
        (attach,) = _of(mocks.seen, "ec2/volumeAttachment:VolumeAttachment")
        assert attach["instanceId"] == "demo-nodes-node0_id" and attach["volumeId"] == "demo-nodes-shared_id"
        assert attach["deviceName"] == "/dev/sdf"
        nodes = _of(mocks.seen, "ec2/instance:Instance")
        assert nodes[0]["tags"]["mpicloud:shared-volume"] == "demo-nodes-shared_id"
        assert all("mpicloud:shared-volume" not in n["tags"] for n in nodes[1:])
    assert cluster.nodes.shared_attachment is not None
    return pulumi.Output.all(*[n.id for n in cluster.nodes.instances], cluster.nodes.shared_attachment.id).apply(check)


@pulumi.runtime.test
def test_secrets_have_a_per_deployment_path_and_key(mocks: Mocks) -> pulumi.Output[Any]:
    def check(_: Any) -> None:
        (key,) = _of(mocks.seen, "kms/key:Key")
        assert key["enableKeyRotation"] is True
        policy = json.loads(key["policy"])
        admin, use = policy["Statement"]
        assert admin["Principal"] == {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}
        uses = ["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey", "kms:GenerateDataKeyWithoutPlaintext",
                "kms:ReEncryptFrom", "kms:ReEncryptTo", "kms:CreateGrant"]  # a grant would hand decryption out
        assert not [(a, u) for a in admin["Action"] for u in uses if fnmatch.fnmatchcase(u, a)]
        assert use["Principal"] == {"AWS": "arn:aws:mock:::demo-id-role"}
        assert use["Action"] == ["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey"]
        policies = [json.loads(p["policy"]) for p in _of(mocks.seen, "iam/rolePolicy:RolePolicy")]
        secrets = next(p for p in policies if p["Statement"][0]["Sid"] == "ClusterSecrets")
        assert secrets["Statement"][1] == {"Sid": "ClusterSecretsKey", "Effect": "Allow", "Action": use["Action"],
                                           "Resource": KEY_ARN}
        for node in _of(mocks.seen, "ec2/instance:Instance"):
            assert node["tags"]["mpicloud:ssm-prefix"] == PREFIX and node["tags"]["mpicloud:kms-key"] == KEY_ID
        assert [f.issue for f in analyze_policy_string(json.dumps(secrets)).findings] == []
    return _deployed(aws_spec()).apply(check)


@pulumi.runtime.test
def test_members_egress_to_the_group_itself(mocks: Mocks) -> pulumi.Output[Any]:
    def check(_: Any) -> None:
        rules = _of(mocks.seen, "vpc/securityGroupEgressRule:SecurityGroupEgressRule")
        (member,) = [r for r in rules if "referencedSecurityGroupId" in r]
        assert member["referencedSecurityGroupId"] == member["securityGroupId"] and member["ipProtocol"] == "-1"
    return _deployed(aws_spec(size="c5n.18xlarge", aws={"efa": True})).apply(check)


@pulumi.runtime.test
def test_efa_nodes_are_reached_through_their_elastic_ips(mocks: Mocks) -> pulumi.Output[Any]:
    spec = aws_spec(size="c5n.18xlarge", aws={"efa": True})
    cluster = program.MpiCluster(spec.name, program.MpiClusterArgs(spec))

    def check(out: list[Any]) -> None:
        ips, ssh = out
        assert len(ips) == 3 and all(ip.startswith("203.0.113.") for ip in ips)
        assert ssh == f"ssh mpiuser@{ips[0]}" or ssh.endswith(f"@{ips[0]}")
    return pulumi.Output.all(cluster.outputs["public_ips"], cluster.outputs["ssh_command"]).apply(check)


def _names(seen: list[tuple[str, str, dict[str, Any]]], typ: str) -> dict[str, dict[str, Any]]:
    return {name: inputs for t, name, inputs in seen if t == f"aws:{typ}"}


@pulumi.runtime.test
def test_elastic_cluster_is_the_head_and_a_launch_template(mocks: Mocks) -> pulumi.Output[Any]:
    """The same resources and head policy as templates/cloudformation/cluster-elastic.json."""
    spec = aws_spec(nodes={"min": 0, "max": 4}, aws={"suspend": "terminate"})

    def check(_: Any) -> None:
        instances = _names(mocks.seen, "ec2/instance:Instance")
        assert list(instances) == ["demo-nodes-node0"]
        head = instances["demo-nodes-node0"]
        assert head["iamInstanceProfile"] == "demo-id-head-profile"
        assert head["tags"]["mpicloud:launch-template"] == "demo-nodes-compute_id"
        assert head["tags"][TAG_NODES] == "5"
        assert gzip.decompress(base64.b64decode(head["userDataBase64"])).decode() == cloud_config(spec, 0)
        (template,) = _of(mocks.seen, "ec2/launchTemplate:LaunchTemplate")
        assert template["imageId"] == "ami-0123456789abcdef0" and template["instanceType"] == spec.size
        assert template["iamInstanceProfile"] == {"name": "demo-id-profile"}  # the nodes' role, not the head's
        assert template["placement"] == {"groupName": "demo-nodes-pg"}
        assert template["networkInterfaces"] == [{"deviceIndex": 0, "subnetId": "demo-net-subnet_id",
                                                  "securityGroups": ["demo-net-sg_id"],
                                                  "associatePublicIpAddress": "true",
                                                  "deleteOnTermination": "true"}]
        assert template["metadataOptions"]["httpTokens"] == "required" and template["updateDefaultVersion"]
        worker = gzip.decompress(base64.b64decode(template["userData"])).decode()
        assert worker == cloud_config(spec, None)
        for text in (worker, cloud_config(spec, 0)):
            assert "PRIVATE KEY-----" not in text and "aws_secret_access_key" not in text
        tags = {t["resourceType"]: t["tags"] for t in template["tagSpecifications"]}
        assert tags["instance"]["mpicloud:cluster"] == "demo" and tags["instance"][TAG_NODES] == "5"
        assert tags["instance"]["mpicloud:ssm-prefix"] == PREFIX and tags["volume"]["mpicloud:cluster"] == "demo"
        # runner.json: the pool's node actions and settings (what cluster-files.sh completes at boot)
        files = {f["path"]: f["content"] for f in yaml.safe_load(cloud_config(spec, 0))["write_files"]}
        pool = json.loads(files["/opt/mpicloud/runner.base.json"])["pool"]
        assert pool["suspend_command"] == ["/usr/bin/python3", "/opt/mpicloud/ec2_nodes.py", "suspend", "--root",
                                           "/shared/.mpicloud"]
        assert pool["aws"]["suspend"] == "terminate" and pool["aws"]["addresses"]["node4"] == "10.0.0.14"
        attached = _names(mocks.seen, "iam/rolePolicy:RolePolicy")
        policies = {name: json.loads(p["policy"]) for name, p in attached.items()}
        roles = {name: p["role"] for name, p in attached.items()}
        assert roles["demo-id-head-node-actions"] == "demo-id-head-role_id"
        assert policies["demo-id-head-node-actions"] == node_actions_policy(
            "demo", "eu-west-1", ACCOUNT, "demo-nodes-compute_id", "arn:aws:mock:::demo-id-role")
        # the head has every policy the nodes have (secrets, bucket), under its own names; the nodes no actions
        assert {n.replace("-head", "") for n in policies if "-head-" in n} == {
            "demo-id-secrets", "demo-id-bucket", "demo-id-node-actions"}
        assert not any("ec2:" in json.dumps(p) for n, p in policies.items() if "-head-" not in n)
        (key,) = _of(mocks.seen, "kms/key:Key")
        users = json.loads(key["policy"])["Statement"][1]["Principal"]["AWS"]
        assert users == ["arn:aws:mock:::demo-id-role", "arn:aws:mock:::demo-id-head-role"]
        policy, ec2 = policies["demo-id-head-node-actions"], f"arn:aws:ec2:eu-west-1:{ACCOUNT}"
        mine = f"{ec2}:launch-template/demo-nodes-compute_id"
        instance = f"{ec2}:instance/i-1"
        assert evaluate(policy, "ec2:RunInstances", instance,
                        {"ec2:LaunchTemplate": mine, "aws:RequestTag/mpicloud:cluster": "demo"}) == "allow"
        assert evaluate(policy, "ec2:RunInstances", instance, {
            "ec2:LaunchTemplate": f"{ec2}:launch-template/lt-other",
            "aws:RequestTag/mpicloud:cluster": "demo"}) == "implicit-deny"
        assert evaluate(policy, "ec2:StopInstances", instance, {"ec2:ResourceTag/mpicloud:cluster": "x"}) == \
            "implicit-deny"
    cluster = program.MpiCluster(spec.name, program.MpiClusterArgs(spec))
    assert cluster.nodes.launch_template is not None
    waited = [*cluster.nodes.instances, cluster.nodes.launch_template, *cluster.identity.policies]
    return pulumi.Output.all(*[r.id for r in waited], cluster.outputs["launch_template_id"]).apply(check)


@pulumi.runtime.test
def test_elastic_slurm_cluster_boots_its_cloud_nodes_from_the_same_user_data(mocks: Mocks) -> pulumi.Output[Any]:
    """With Slurm the Pulumi program deploys the same head and launch template; their user data carry the power
    saving (tests/cloud/test_aws_elastic_slurm.py checks what it writes at boot)."""
    spec = aws_spec(scheduler="slurm", nodes={"min": 1, "max": 4})

    def check(_: Any) -> None:
        instances = _names(mocks.seen, "ec2/instance:Instance")
        assert list(instances) == ["demo-nodes-node0"]
        head = gzip.decompress(base64.b64decode(instances["demo-nodes-node0"]["userDataBase64"])).decode()
        (template,) = _of(mocks.seen, "ec2/launchTemplate:LaunchTemplate")
        worker = gzip.decompress(base64.b64decode(template["userData"])).decode()
        assert (head, worker) == (cloud_config(spec, 0), cloud_config(spec, None))
        assert "/etc/sudoers.d/mpicloud-slurm-power" in head and "sudoers" not in worker
        for text in (head, worker):
            assert "NodeName=node[1-@LAST@] NodeAddr=@ADDRS@ CPUs=@CPUS@ State=CLOUD" in text
    cluster = program.MpiCluster(spec.name, program.MpiClusterArgs(spec))
    assert cluster.nodes.launch_template is not None
    waited = [*cluster.nodes.instances, cluster.nodes.launch_template, *cluster.identity.policies]
    return pulumi.Output.all(*[r.id for r in waited], cluster.outputs["launch_template_id"]).apply(check)
