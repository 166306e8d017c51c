"""templates/cloudformation/cluster.json: cfn-lint and checkov clean, project rules, and a moto deploy."""

from __future__ import annotations

import base64
import gzip
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import pytest

from mpicloud.errors import RenderError
from mpicloud.render.aws import MAX_TEMPLATE_NODES, TAG_NODES
from mpicloud.render.aws.cloud_init import cloud_config, node_addresses, runner_parameters
from mpicloud.render.cloudformation import cluster_template, cluster_template_json, launch_stack_url, template_spec
from tests.cloud.cfn_moto import create_stack, for_moto, mocked_aws, skipped_types

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "templates" / "cloudformation" / "cluster.json"
#: justified checkov skips (docs/aws-linux.md "Security findings"): every other finding fails the test
CHECKOV_SKIPS = {
    # nodes have public IPs so SSH (22 from AllowedSshCidr only) and package downloads work without a NAT gateway
    "CKV_AWS_88",
}
#: resource types moto's CloudFormation silently skips (a UserWarning only): covered by cfn-lint/project checks
MOTO_SKIPS = {"AWS::EC2::PlacementGroup", "AWS::EC2::SecurityGroupEgress"}


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return dict(json.loads(TEMPLATE.read_text()))


@pytest.fixture(scope="module")
def checkov_report() -> dict[str, Any]:
    """One checkov run for the module (≈3 s)."""
    checkov = Path(sys.executable).with_name("checkov")
    done = subprocess.run([str(checkov), "-f", str(TEMPLATE), "--framework", "cloudformation", "--skip-download",
                           "--quiet", "--compact", "-o", "json"], capture_output=True, text=True, timeout=300)
    assert done.stdout.strip(), done.stderr
    return dict(json.loads(done.stdout))


def test_checked_in_template_is_the_rendered_one() -> None:
    assert TEMPLATE.read_text() == cluster_template_json()


#: cfn-lint's condition checks (sympy) take more than 10 minutes on the full 256-node template; a template
#: rendered by the same code with 16 node slots has every resource, parameter and condition shape of it
#: (two groups of the grouped node-count conditions) and lints in about 30 s
LINT_NODES = 16


@pytest.fixture()
def lintable(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The cluster template rendered with LINT_NODES node slots instead of MAX_TEMPLATE_NODES."""
    from mpicloud.render import cloudformation

    monkeypatch.setattr(cloudformation, "MAX_TEMPLATE_NODES", LINT_NODES)
    return cluster_template()


def test_cfn_lint_reports_nothing(lintable: dict[str, Any]) -> None:
    from cfnlint.api import ManualArgs, lint

    assert len([r for r in lintable["Resources"] if r.startswith("Node") and r[4:].isdigit()]) == LINT_NODES
    matches = lint(json.dumps(lintable), config=ManualArgs(regions=["us-east-1", "eu-west-1"]))
    assert [(m.rule.id, m.message) for m in matches] == []


def test_cfn_lint_catches_a_broken_template(lintable: dict[str, Any]) -> None:
    from cfnlint.api import ManualArgs, lint

    broken = lintable
    broken["Resources"]["SshIngress"]["Properties"]["FromPort"] = "twenty-two"
    broken["Resources"]["Node0"]["Properties"]["LaunchTemplate"]["LaunchTemplateId"] = {"Ref": "Nope"}
    ids = {m.rule.id for m in lint(json.dumps(broken), config=ManualArgs(regions=["us-east-1"]))}
    assert {"E3012", "E1020"} <= ids


def test_checkov_is_clean_apart_from_justified_skips(checkov_report: dict[str, Any]) -> None:
    failed = {(c["check_id"], c["resource"]) for c in checkov_report["results"]["failed_checks"]}
    assert {check for check, _ in failed} <= CHECKOV_SKIPS, failed
    assert checkov_report["summary"]["passed"] >= 20


def test_ssh_is_open_only_to_the_parameter(template: dict[str, Any]) -> None:
    resources = template["Resources"]
    ingress = [r["Properties"] for r in resources.values() if r["Type"] == "AWS::EC2::SecurityGroupIngress"]
    assert {json.dumps(i.get("CidrIp"), sort_keys=True) for i in ingress} == {'{"Ref": "AllowedSshCidr"}', "null"}
    ssh = next(i for i in ingress if "CidrIp" in i)
    assert (ssh["FromPort"], ssh["ToPort"], ssh["IpProtocol"]) == (22, 22, "tcp")
    self_rule = next(i for i in ingress if "SourceSecurityGroupId" in i)
    assert self_rule["SourceSecurityGroupId"] == self_rule["GroupId"] == {"Ref": "SecurityGroup"}
    assert "Default" not in template["Parameters"]["AllowedSshCidr"]


def test_members_egress_to_the_group_itself(template: dict[str, Any]) -> None:
    egress = template["Resources"]["ClusterEgress"]
    assert egress["Type"] == "AWS::EC2::SecurityGroupEgress"
    assert egress["Properties"]["GroupId"] == egress["Properties"]["DestinationSecurityGroupId"] == \
        {"Ref": "SecurityGroup"} and egress["Properties"]["IpProtocol"] == "-1"


def test_image_is_pinnable_and_shared_volume_is_snapshotted(template: dict[str, Any]) -> None:
    assert template["Parameters"]["LatestImageId"]["Type"] == "AWS::SSM::Parameter::Value<AWS::EC2::Image::Id>"
    assert template["Parameters"]["ImageId"]["Default"] == ""
    assert template["Outputs"]["ImageId"]["Value"] == {
        "Fn::If": ["HasPinnedImage", {"Ref": "ImageId"}, {"Ref": "LatestImageId"}]}
    volume = template["Resources"]["SharedVolume"]
    assert volume["DeletionPolicy"] == volume["UpdateReplacePolicy"] == "Snapshot"
    assert volume["Properties"]["Encrypted"] is True
    attach = template["Resources"]["SharedVolumeAttachment"]["Properties"]
    assert attach == {"Device": "/dev/sdf", "InstanceId": {"Ref": "Node0"}, "VolumeId": {"Ref": "SharedVolume"}}
    key = template["Resources"]["SecretsKey"]
    assert key["Properties"]["EnableKeyRotation"] is True
    use = key["Properties"]["KeyPolicy"]["Statement"][1]
    assert use["Principal"] == {"AWS": {"Fn::GetAtt": ["NodeRole", "Arn"]}}
    assert "kms:Decrypt" not in key["Properties"]["KeyPolicy"]["Statement"][0]["Action"]


def test_nodes_imdsv2_encrypted_placed_and_conditional(template: dict[str, Any]) -> None:
    data = template["Resources"]["NodeLaunchTemplate"]["Properties"]["LaunchTemplateData"]
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    assert data["MetadataOptions"]["InstanceMetadataTags"] == "enabled"
    assert all(m["Ebs"]["Encrypted"] is True for m in data["BlockDeviceMappings"])
    assert data["Placement"] == {"GroupName": {"Ref": "PlacementGroup"}}
    assert template["Resources"]["PlacementGroup"]["Properties"]["Strategy"] == "cluster"
    nodes = {k: v for k, v in template["Resources"].items() if v["Type"] == "AWS::EC2::Instance"}
    parts = sorted(k for k, v in template["Resources"].items() if v["Type"] == "AWS::SSM::Parameter")
    assert parts and nodes["Node0"]["DependsOn"] == ["DefaultRoute", "NodeSecretsPolicy", *parts]
    assert len(nodes) == MAX_TEMPLATE_NODES == 256 and "Condition" not in nodes["Node0"]
    ips = node_addresses(template_spec().aws_options.subnet_cidr, MAX_TEMPLATE_NODES)
    # node0 has its own user data; every worker takes the launch template's, which finds its index at boot
    shared = gzip.decompress(base64.b64decode(data["UserData"])).decode()
    assert shared == cloud_config(template_spec(), None, ips)
    for i in range(MAX_TEMPLATE_NODES):
        props = nodes[f"Node{i}"]["Properties"]
        assert props["NetworkInterfaces"][0]["PrivateIpAddress"] == ips[i]
        assert ("UserData" in props) == (i == 0)
        assert {"Key": TAG_NODES, "Value": {"Ref": "NodeCount"}} in props["Tags"]
        assert props["ImageId"] == {"Fn::If": ["HasPinnedImage", {"Ref": "ImageId"}, {"Ref": "LatestImageId"}]}
    text = gzip.decompress(base64.b64decode(nodes["Node0"]["Properties"]["UserData"])).decode()
    assert text == cloud_config(template_spec(), 0, ips)


def test_every_taggable_resource_is_tagged(template: dict[str, Any]) -> None:
    untaggable = {"AWS::EC2::Route", "AWS::EC2::SubnetRouteTableAssociation", "AWS::EC2::VPCGatewayAttachment",
                  "AWS::EC2::SecurityGroupIngress", "AWS::IAM::InstanceProfile", "AWS::EC2::LaunchTemplate",
                  "AWS::IAM::Policy", "AWS::EC2::SecurityGroupEgress", "AWS::EC2::VolumeAttachment"}
    cluster = {"Key": "mpicloud:cluster", "Value": {"Ref": "AWS::StackName"}}
    for name, resource in template["Resources"].items():
        if resource["Type"] == "AWS::SSM::Parameter":  # the one type whose Tags are a map
            assert resource["Properties"]["Tags"] == {"mpicloud:cluster": {"Ref": "AWS::StackName"}}, name
        elif resource["Type"] not in untaggable:
            assert cluster in resource["Properties"]["Tags"], name
    launch = template["Resources"]["NodeLaunchTemplate"]["Properties"]
    assert cluster in launch["TagSpecifications"][0]["Tags"]
    assert launch["LaunchTemplateData"]["TagSpecifications"][0]["ResourceType"] == "volume"


def _enabled(conditions: dict[str, Any], name: str, count: str) -> bool:
    """Evaluate the template's Equals/Or/Not conditions for a NodeCount value."""
    def ev(node: Any) -> bool:
        if "Condition" in node:
            return ev(conditions[node["Condition"]])
        if "Fn::Or" in node:
            return any(ev(n) for n in node["Fn::Or"])
        if "Fn::Not" in node:
            return not ev(node["Fn::Not"][0])
        left, right = node["Fn::Equals"]
        return (count if left == {"Ref": "NodeCount"} else left) == right
    return ev(conditions[name])


@pytest.mark.parametrize("count", [1, 2, 5, 9, 10, 11, 16, 100, 247, 248, 255, MAX_TEMPLATE_NODES])
def test_node_count_switches_exactly_that_many_nodes_on(template: dict[str, Any], count: int) -> None:
    on = 1 + sum(_enabled(template["Conditions"], f"HasNode{i}", str(count)) for i in range(1, MAX_TEMPLATE_NODES))
    assert on == count


def test_bucket_policy_is_prefix_scoped_and_partition_aware(template: dict[str, Any]) -> None:
    policies = template["Resources"]["NodeRole"]["Properties"]["Policies"]
    bucket = policies[0]["Fn::If"][1]["PolicyDocument"]["Statement"]
    listing = next(s for s in bucket if s["Action"] == "s3:ListBucket")
    assert listing["Resource"] == {"Fn::Sub": "arn:${AWS::Partition}:s3:::${BucketName}"}
    assert listing["Condition"]["StringLike"]["s3:prefix"][1] == {"Fn::Sub": "${InputPrefix}*"}
    write = next(s for s in bucket if "s3:PutObject" in s["Action"])
    assert write["Resource"] == {"Fn::Sub": "arn:${AWS::Partition}:s3:::${BucketName}/${OutputPrefix}*"}
    secrets = template["Resources"]["NodeSecretsPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert secrets[0]["Resource"]["Fn::Sub"].endswith(":parameter/mpicloud/${AWS::StackName}/${SecretsKey}/*")
    assert secrets[1] == {"Sid": "ClusterSecretsKey", "Effect": "Allow",
                          "Action": ["kms:Decrypt", "kms:Encrypt", "kms:GenerateDataKey"],
                          "Resource": {"Fn::GetAtt": ["SecretsKey", "Arn"]}}


def test_kms_and_bucket_role_policies_only_when_given(template: dict[str, Any]) -> None:
    kms = template["Resources"]["NodeKmsPolicy"]
    assert kms["Condition"] == "HasKmsKey" and kms["Properties"]["Roles"] == [{"Ref": "NodeRole"}]
    assert kms["Properties"]["PolicyDocument"]["Statement"] == [{
        "Sid": "UseBucketKey", "Effect": "Allow", "Action": ["kms:Decrypt", "kms:GenerateDataKey"],
        "Resource": {"Ref": "KmsKeyArn"}}]
    assert template["Conditions"]["HasKmsKey"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "KmsKeyArn"}, ""]}]}
    assert template["Parameters"]["KmsKeyArn"]["Default"] == ""
    assume = template["Resources"]["NodeBucketRolePolicy"]
    assert assume["Condition"] == "HasBucketRole"
    assert assume["Properties"]["PolicyDocument"]["Statement"][0]["Resource"] == {"Ref": "BucketRoleArn"}


KMS_KEY = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
BUCKET_ROLE = "arn:aws:iam::111122223333:role/sim-data-access"


def test_moto_deploys_the_template() -> None:
    with mocked_aws() as caught:
        region = "us-east-1"
        ec2 = boto3.client("ec2", region_name=region)
        ec2.create_key_pair(KeyName="me")
        # moto reserves /aws/ names, ships no Debian parameter and resolves the Default even when a value is
        # given, reads SSM parameter Tags as a list and KMS key Tags as TagKey/TagValue: the deployed copy
        # differs only in those three places
        body = cluster_template()
        image = for_moto(body, region, "/test/debian-12")
        cfn, stack = create_stack(json.dumps(body), "mpi", {
            "KeyName": "me", "NodeCount": "16", "AllowedSshCidr": "203.0.113.0/24", "BucketName": "my-simulation-data",
            "KmsKeyArn": KMS_KEY, "BucketRoleArn": BUCKET_ROLE}, region)
        listed = cfn.list_stack_resources(StackName="mpi")["StackResourceSummaries"]
        created = {r["LogicalResourceId"]: r["ResourceType"] for r in listed if r["LogicalResourceId"]}
        instances = [i for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]]
        groups = ec2.describe_security_groups(Filters=[{"Name": "group-name", "Values": ["*SecurityGroup*"]}])
        iam = boto3.client("iam", region_name=region)
        role = iam.list_roles()["Roles"]
        kms = iam.get_role_policy(RoleName=role[0]["RoleName"], PolicyName="bucket-kms")["PolicyDocument"]
        assume = iam.get_role_policy(RoleName=role[0]["RoleName"], PolicyName="assume-bucket-role")["PolicyDocument"]
        pages = boto3.client("ssm", region_name=region).get_paginator("get_parameters_by_path")
        stored = [p for page in pages.paginate(Path="/mpicloud/mpi", Recursive=True) for p in page["Parameters"]]
        outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
        key_id = boto3.client("kms", region_name=region).list_keys()["Keys"][0]["KeyId"]
        volumes = ec2.describe_volumes(Filters=[{"Name": "size", "Values": ["100"]}])["Volumes"]
    assert skipped_types(caught) == MOTO_SKIPS
    # every declared resource is created except the skipped types and the nodes NodeCount=16 switches off
    expected = {name: r["Type"] for name, r in cluster_template()["Resources"].items()
                if r["Type"] not in MOTO_SKIPS and name not in {f"Node{i}" for i in range(16, MAX_TEMPLATE_NODES)}}
    assert created == expected
    # moto applies neither the launch template nor NetworkInterfaces to instances (fixed IPs, IMDSv2, encryption
    # and placement are asserted on the template above and by cfn-lint); it does honour image, key, role, tags
    assert len(instances) == 16
    assert all(i["KeyName"] == "me" and i["ImageId"] == image for i in instances)
    assert sorted(t["Value"] for i in instances for t in i["Tags"] if t["Key"] == "Name") == sorted(
        f"mpi-node{i}" for i in range(16))
    assert outputs["ImageId"] == image  # what the user pins on updates
    assert outputs["SsmPrefix"] == f"/mpicloud/mpi/{key_id}"  # the deployment's own nonce
    assert {t["Key"]: t["Value"] for i in instances for t in i["Tags"]}["mpicloud:kms-key"] == key_id
    # moto ignores the volume's Encrypted/VolumeType (asserted on the template); it does attach it to node0
    node0 = next(i["InstanceId"] for i in instances for t in i["Tags"] if t["Value"] == "mpi-node0")
    assert len(volumes) == 1 and volumes[0]["Attachments"][0]["Device"] == "/dev/sdf"
    assert volumes[0]["Attachments"][0]["InstanceId"] == node0
    assert all(i["IamInstanceProfile"]["Arn"] for i in instances)
    perms = [p for g in groups["SecurityGroups"] for p in g["IpPermissions"]]
    assert any(p.get("IpRanges") == [{"CidrIp": "203.0.113.0/24", "Description": "SSH from the allowed network only"}]
               for p in perms)
    assert any(p["UserIdGroupPairs"] for p in perms)
    assert len(role) == 1
    assert kms["Statement"][0]["Resource"] == KMS_KEY
    assert assume["Statement"] == [{"Sid": "AssumeBucketRole", "Effect": "Allow", "Action": "sts:AssumeRole",
                                    "Resource": BUCKET_ROLE}]
    assert {p["Name"]: p["Value"] for p in stored} == runner_parameters(f"/mpicloud/mpi/{key_id}")


def test_template_from_a_spec_keeps_its_defaults_and_limit() -> None:
    from tests.specdata import aws_spec

    with pytest.raises(RenderError, match="too small for 256 nodes"):  # the template always declares 256
        cluster_template(aws_spec(nodes=4))
    template = cluster_template(aws_spec(nodes=4, slots_per_node=16, aws={"subnet_cidr": "10.0.0.0/23"}))
    assert template["Parameters"]["NodeCount"]["Default"] == "4"
    assert template["Parameters"]["NodeCount"]["AllowedValues"] == [str(n) for n in range(1, 257)]
    assert template["Parameters"]["SlotsPerNode"]["Default"] == 16
    from mpicloud.errors import SpecError

    aws_spec(nodes=MAX_TEMPLATE_NODES)  # the template covers the spec
    with pytest.raises(SpecError):
        aws_spec(nodes=MAX_TEMPLATE_NODES + 1)


def test_launch_stack_url() -> None:
    url = launch_stack_url("https://mpicloud-templates.s3.eu-west-1.amazonaws.com/v1/cluster.json", "eu-west-1",
                           "mpi-cluster", {"NodeCount": "4", "InstanceType": "c5n.18xlarge"})
    assert url == ("https://console.aws.amazon.com/cloudformation/home?region=eu-west-1#/stacks/quickcreate?"
                   "templateURL=https%3A%2F%2Fmpicloud-templates.s3.eu-west-1.amazonaws.com%2Fv1%2Fcluster.json"
                   "&stackName=mpi-cluster&param_InstanceType=c5n.18xlarge&param_NodeCount=4")
    for bad in ("https://raw.githubusercontent.com/x/cluster.json", "http://b.s3.amazonaws.com/cluster.json"):
        with pytest.raises(RenderError, match="S3 URL"):
            launch_stack_url(bad, "eu-west-1")
    with pytest.raises(RenderError, match="stack name"):
        launch_stack_url("https://b.s3.amazonaws.com/c.json", "eu-west-1", "1bad")
