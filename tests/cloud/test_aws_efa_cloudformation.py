"""templates/cloudformation/cluster-efa.json: every node attached through its own EFA interface (fixed address, the
security group whose self rules EFA needs) with an Elastic IP; within CloudFormation's 500 resources; cfn-lint
clean and a moto deploy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import pytest

from mpicloud.render import cloudformation
from mpicloud.render.aws.cloud_init import node_addresses
from mpicloud.render.cloudformation import MAX_EFA_NODES, cluster_template, efa_template_json, template_spec
from tests.cloud.cfn_moto import create_stack, for_moto, mocked_aws, skipped_types
from tests.cloud.test_aws_cloudformation import BUCKET_ROLE, KMS_KEY, MOTO_SKIPS

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "templates" / "cloudformation" / "cluster-efa.json"
#: CloudFormation's resource limit per template
RESOURCE_LIMIT = 500


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return dict(json.loads(TEMPLATE.read_text()))


@pytest.fixture()
def small(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The EFA template with 16 node slots (cfn-lint's condition checks take minutes on more)."""
    monkeypatch.setattr(cloudformation, "MAX_EFA_NODES", 16)
    return json.loads(cloudformation.efa_template_json())  # type: ignore[no-any-return]


def test_checked_in_template_is_the_rendered_one() -> None:
    assert TEMPLATE.read_text() == efa_template_json()


def test_every_node_has_its_efa_interface_and_elastic_ip(template: dict[str, Any]) -> None:
    resources = template["Resources"]
    assert len(resources) <= RESOURCE_LIMIT
    assert template["Parameters"]["InstanceType"]["Default"] == "c5n.18xlarge"
    assert template["Parameters"]["NodeCount"]["AllowedValues"][-1] == str(MAX_EFA_NODES)
    ips = node_addresses(template_spec().aws_options.subnet_cidr, MAX_EFA_NODES)
    for i in range(MAX_EFA_NODES):
        efa, eip, node = resources[f"Node{i}Efa"], resources[f"Node{i}Ip"], resources[f"Node{i}"]
        assert efa["Properties"]["InterfaceType"] == "efa" and efa["Properties"]["PrivateIpAddress"] == ips[i]
        assert efa["Properties"]["GroupSet"] == [{"Ref": "SecurityGroup"}]
        assert node["Properties"]["NetworkInterfaces"] == [{"DeviceIndex": "0",
                                                             "NetworkInterfaceId": {"Ref": f"Node{i}Efa"}}]
        assert eip["Properties"]["InstanceId"] == {"Ref": f"Node{i}"}
        assert efa.get("Condition") == eip.get("Condition") == node.get("Condition")
    for rule, key in (("ClusterIngress", "SourceSecurityGroupId"), ("ClusterEgress", "DestinationSecurityGroupId")):
        assert resources[rule]["Properties"]["IpProtocol"] == "-1"
        assert resources[rule]["Properties"][key] == {"Ref": "SecurityGroup"}
    assert template["Outputs"]["HeadPublicIp"]["Value"] == {"Ref": "Node0Ip"}
    assert "${Node0Ip}" in template["Outputs"]["AttachCommand"]["Value"]["Fn::Sub"]


def test_the_plain_template_keeps_its_interfaces() -> None:
    plain = cluster_template()
    assert not [r for r in plain["Resources"].values() if r["Type"] == "AWS::EC2::NetworkInterface"]


def test_checkov_is_clean() -> None:
    checkov = Path(sys.executable).with_name("checkov")
    done = subprocess.run([str(checkov), "-f", str(TEMPLATE), "--framework", "cloudformation", "--skip-download",
                           "--quiet", "--compact", "-o", "json"], capture_output=True, text=True, timeout=300)
    report = json.loads(done.stdout)
    assert report["results"]["failed_checks"] == [] and report["summary"]["parsing_errors"] == 0
    assert report["summary"]["passed"] >= 20


def test_cfn_lint_reports_nothing(small: dict[str, Any]) -> None:
    from cfnlint.api import ManualArgs, lint

    matches = lint(json.dumps(small), config=ManualArgs(regions=["us-east-1", "eu-west-1"]))
    assert [(m.rule.id, m.message) for m in matches] == []


def test_moto_deploys_the_template(small: dict[str, Any]) -> None:
    with mocked_aws() as caught:
        region = "us-east-1"
        ec2 = boto3.client("ec2", region_name=region)
        ec2.create_key_pair(KeyName="me")
        body = small
        for_moto(body, region, "/test/debian-12")
        cfn, _ = create_stack(json.dumps(body), "efa", {
            "KeyName": "me", "NodeCount": "4", "AllowedSshCidr": "203.0.113.0/24", "BucketName": "my-simulation-data",
            "KmsKeyArn": KMS_KEY, "BucketRoleArn": BUCKET_ROLE}, region)
        listed = cfn.list_stack_resources(StackName="efa")["StackResourceSummaries"]
        instances = [i for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]]
        addresses = ec2.describe_addresses()["Addresses"]
    assert skipped_types(caught) == MOTO_SKIPS
    created = {r["ResourceType"] for r in listed}
    assert {"AWS::EC2::NetworkInterface", "AWS::EC2::EIP"} <= created
    assert len(instances) == 4 and len(addresses) == 4
    assert {a["InstanceId"] for a in addresses} == {i["InstanceId"] for i in instances}
