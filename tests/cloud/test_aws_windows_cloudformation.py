"""templates/cloudformation/windows-cluster.json: cfn-lint clean, RDP and SSH only from the parameter, a generated
password only in Secrets Manager (never in the template, user data or outputs), and a moto deploy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import pytest

from mpicloud.render import cloudformation
from mpicloud.render.aws import MAX_TEMPLATE_NODES, powershell
from mpicloud.render.aws.cfn_windows import ROOT_DEVICE, template_spec, windows_template, windows_template_json
from mpicloud.render.windows_bootstrap import bootstrap_ps1
from tests.cloud.cfn_moto import create_stack, for_moto, mocked_aws, skipped_types
from tests.cloud.test_aws_cloudformation import BUCKET_ROLE, KMS_KEY

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "templates" / "cloudformation" / "windows-cluster.json"
LINT_NODES = 16
#: resource types moto's CloudFormation silently skips (a UserWarning only): covered by cfn-lint/project checks; moto
#: has no AWS::SecretsManager::Secret either, so the deployed copy names a fixed ARN where the template Refs it
MOTO_SKIPS = {"AWS::EC2::PlacementGroup", "AWS::EC2::SecurityGroupEgress", "AWS::SecretsManager::Secret"}
SECRET_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:win-admin-AbCdEf"


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return dict(json.loads(TEMPLATE.read_text()))


@pytest.fixture()
def small(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The template with LINT_NODES node slots (cfn-lint's condition checks take minutes on 256)."""
    monkeypatch.setattr(cloudformation, "MAX_TEMPLATE_NODES", LINT_NODES)
    return windows_template()


def test_checked_in_template_is_the_rendered_one() -> None:
    assert TEMPLATE.read_text() == windows_template_json()


#: justified checkov skips; every other finding fails
CHECKOV_SKIPS = {
    "CKV_AWS_88",  # public IPs: SSH/RDP from AllowedSshCidr only and downloads without a NAT gateway (as on Linux)
    # the password secret uses Secrets Manager's own key: the deployment's KMS key may be used by the node role
    # only (so the stack could not write a secret with it); the node role's policy names this secret alone
    "CKV_AWS_149",
}


def test_checkov_is_clean_apart_from_justified_skips() -> None:
    checkov = Path(sys.executable).with_name("checkov")
    done = subprocess.run([str(checkov), "-f", str(TEMPLATE), "--framework", "cloudformation", "--skip-download",
                           "--quiet", "--compact", "-o", "json"], capture_output=True, text=True, timeout=300)
    report = json.loads(done.stdout)
    assert {c["check_id"] for c in report["results"]["failed_checks"]} <= CHECKOV_SKIPS
    assert report["summary"]["passed"] >= 20 and report["summary"]["parsing_errors"] == 0


def test_cfn_lint_reports_nothing(small: dict[str, Any]) -> None:
    from cfnlint.api import ManualArgs, lint

    matches = lint(json.dumps(small), config=ManualArgs(regions=["us-east-1", "eu-west-1"]))
    assert [(m.rule.id, m.message) for m in matches] == []


def test_ssh_and_rdp_only_from_the_parameter(template: dict[str, Any]) -> None:
    ingress = {name: r["Properties"] for name, r in template["Resources"].items()
               if r["Type"] == "AWS::EC2::SecurityGroupIngress" and "CidrIp" in r["Properties"]}
    assert {(p["FromPort"], json.dumps(p["CidrIp"])) for p in ingress.values()} == {
        (22, '{"Ref": "AllowedSshCidr"}'), (3389, '{"Ref": "AllowedSshCidr"}')}


def test_password_generated_into_secrets_manager_and_only_the_nodes_read_it(template: dict[str, Any]) -> None:
    resources = template["Resources"]
    secret = resources["AdminPassword"]["Properties"]
    assert secret["GenerateSecretString"]["RequireEachIncludedType"] is True and "SecretString" not in secret
    policy = resources["NodeAdminPasswordPolicy"]["Properties"]
    assert policy["PolicyDocument"]["Statement"] == [{"Sid": "AdminPassword", "Effect": "Allow",
                                                      "Action": ["secretsmanager:GetSecretValue"],
                                                      "Resource": {"Ref": "AdminPassword"}}]
    assert "KeyName" not in template["Parameters"] and "password" not in json.dumps(template["Parameters"]).lower()
    assert template["Outputs"]["AdminPasswordSecret"]["Value"] == {"Ref": "AdminPassword"}  # the ARN only
    assert "GetAtt" not in json.dumps(template["Outputs"]["AdminPasswordSecret"])


def test_nodes_boot_the_bootstrap_from_ssm_with_their_tags(template: dict[str, Any]) -> None:
    spec = template_spec()
    script = bootstrap_ps1(spec)
    data = template["Resources"]["NodeLaunchTemplate"]["Properties"]["LaunchTemplateData"]
    assert data["UserData"] == {"Fn::Base64": powershell.user_data(spec, script)}
    assert data["BlockDeviceMappings"][0]["DeviceName"] == ROOT_DEVICE and data["MetadataOptions"][
        "InstanceMetadataTags"] == "enabled"
    parts = {r["Properties"]["Name"]["Fn::Sub"]: r["Properties"]["Value"] for r in template["Resources"].values()
             if r["Type"] == "AWS::SSM::Parameter"}
    assert parts == powershell.script_parameters(cloudformation.PREFIX, script)
    nodes = {k: v for k, v in template["Resources"].items() if v["Type"] == "AWS::EC2::Instance"}
    assert len(nodes) == MAX_TEMPLATE_NODES
    tags = {t["Key"]: t["Value"] for t in nodes["Node5"]["Properties"]["Tags"]}
    assert tags[powershell.TAG_INDEX] == "5" and tags[powershell.TAG_SECRET] == {"Ref": "AdminPassword"}
    assert nodes["Node5"]["Condition"] == "HasNode5"


def test_moto_deploys_the_template(small: dict[str, Any]) -> None:
    with mocked_aws() as caught:
        region = "us-east-1"
        ec2 = boto3.client("ec2", region_name=region)
        body = small
        image = for_moto(body, region, "/test/windows-2022")
        text = json.dumps(body).replace('{"Ref": "AdminPassword"}', json.dumps(SECRET_ARN))
        # a bucket: moto turns the node role's unselected Fn::If policy entry into None
        _, stack = create_stack(text, "win", {
            "NodeCount": "4", "AllowedSshCidr": "203.0.113.0/24", "BucketName": "my-simulation-data",
            "KmsKeyArn": KMS_KEY, "BucketRoleArn": BUCKET_ROLE}, region)
        instances = [i for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]]
        outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
        iam = boto3.client("iam", region_name=region)
        role = iam.list_roles()["Roles"][0]["RoleName"]
        readable = iam.get_role_policy(RoleName=role, PolicyName="admin-password")["PolicyDocument"]
    assert skipped_types(caught) == MOTO_SKIPS
    assert len(instances) == 4 and all(i["ImageId"] == image for i in instances)
    assert sorted({t["Key"]: t["Value"] for t in i["Tags"]}["mpicloud:index"] for i in instances) == ["0", "1", "2",
                                                                                                      "3"]
    assert readable["Statement"][0]["Resource"] == SECRET_ARN and outputs["AdminPasswordSecret"] == SECRET_ARN
    assert outputs["AttachCommand"].endswith("--os windows --slots 1 --password-env MPICLOUD_ADMIN_PASSWORD")
