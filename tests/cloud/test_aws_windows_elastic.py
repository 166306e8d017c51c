"""templates/cloudformation/windows-cluster-elastic.json: cfn-lint and checkov clean, the head N0 alone at deploy, a
launch template for compute nodes, the head's node-actions policy; deployed on a moto server, then the real
ec2_nodes.py of the Windows bundle (under /usr/bin/python3, with the runner.json the Windows head's bootstrap
writes) launches, stops and terminates compute nodes from that launch template."""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import tarfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from mpicloud.assets import runner_bundle
from mpicloud.protocol.pool import CLUSTER_TAG, NODE_TAG
from mpicloud.render.aws import TAG_INDEX, TAG_LAUNCH_TEMPLATE, TAG_NODES, TAG_SECRET, powershell
from mpicloud.render.aws.cfn_windows import ROOT_DEVICE, elastic_template_spec, windows_elastic_template_json
from mpicloud.render.aws.cloud_init import node_addresses
from mpicloud.render.runner_config import NODE_PYTHON
from mpicloud.render.windows_bootstrap import LAUNCH_PORT, OBJECT_LIBS, bootstrap_ps1
from tests.cloud.cfn_moto import create_stack, for_moto, skipped_types
from tests.cloud.test_aws_elastic import (
    SECRET_MARKERS,
    assert_checkov_clean,
    assert_head_policy,
    assert_lints_clean,
    head_only,
    instances,
)
from tests.cloud.test_aws_windows_cloudformation import CHECKOV_SKIPS, MOTO_SKIPS, SECRET_ARN
from tests.integration.s3server import moto_server
from tests.runnerlib import NODE_PYTHON as LOCAL_PYTHON

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "templates" / "cloudformation" / "windows-cluster-elastic.json"
REGION, STACK = "eu-west-1", "winburst"
SPEC = elastic_template_spec()
MAX = 16


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return dict(json.loads(TEMPLATE.read_text()))


def test_checked_in_template_is_the_rendered_one() -> None:
    assert TEMPLATE.read_text() == windows_elastic_template_json()
    assert SPEC.elastic is not None and (SPEC.elastic.min, SPEC.elastic.max) == (0, MAX) and SPEC.os == "windows"


def test_cfn_lint_and_checkov_are_clean(template: dict[str, Any]) -> None:
    assert_lints_clean(template)
    assert_checkov_clean(TEMPLATE, CHECKOV_SKIPS)


def _tags(tags: list[dict[str, Any]]) -> dict[str, Any]:
    return {t["Key"]: t["Value"] for t in tags}


def test_only_the_head_at_deploy_and_a_launch_template_for_the_workers(template: dict[str, Any]) -> None:
    resources, data = head_only(template)
    head = resources["Node0"]["Properties"]
    assert data["ImageId"] == head["ImageId"] and data["InstanceType"] == {"Ref": "InstanceType"}
    assert "KeyName" not in data  # Windows nodes take the administrator password (Secrets Manager)
    assert data["IamInstanceProfile"] == {"Arn": {"Fn::GetAtt": ["NodeProfile", "Arn"]}}
    assert data["NetworkInterfaces"] == [{"DeviceIndex": 0, "SubnetId": {"Ref": "Subnet"},
                                          "Groups": [{"Ref": "SecurityGroup"}], "AssociatePublicIpAddress": True,
                                          "DeleteOnTermination": True}]
    assert data["Placement"] == {"GroupName": {"Ref": "PlacementGroup"}}
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    assert data["BlockDeviceMappings"][0]["DeviceName"] == ROOT_DEVICE
    assert data["BlockDeviceMappings"][0]["Ebs"]["Encrypted"] is True
    # a worker's EC2Launch v2 user data is the fixed workers' (the same for every node: the index is a tag)
    assert data["UserData"] == resources["NodeLaunchTemplate"]["Properties"]["LaunchTemplateData"]["UserData"]
    assert data["TagSpecifications"][0]["ResourceType"] == "instance"
    tags = _tags(data["TagSpecifications"][0]["Tags"])
    assert tags[CLUSTER_TAG] == {"Ref": "AWS::StackName"} and tags[TAG_NODES] == str(MAX + 1)
    assert tags[TAG_SECRET] == {"Ref": "AdminPassword"} and TAG_INDEX not in tags  # the head tags it at launch
    assert head["IamInstanceProfile"] == {"Ref": "HeadProfile"}
    head_tags = _tags(head["Tags"])
    assert head_tags[TAG_LAUNCH_TEMPLATE] == {"Ref": "ComputeLaunchTemplate"} and head_tags[TAG_INDEX] == "0"
    assert head["LaunchTemplate"]["LaunchTemplateId"] == {"Ref": "NodeLaunchTemplate"}
    assert "ComputeLaunchTemplate" not in json.dumps(head["LaunchTemplate"])
    assert template["Outputs"]["ComputeLaunchTemplateId"]["Value"] == {"Ref": "ComputeLaunchTemplate"}


def test_only_the_head_role_may_act_on_nodes(template: dict[str, Any]) -> None:
    resources = template["Resources"]
    assert resources["HeadNodeActionsPolicy"]["Properties"]["Roles"] == [{"Ref": "HeadRole"}]
    for name, resource in resources.items():
        if resource["Type"] == "AWS::IAM::Policy" and name != "HeadNodeActionsPolicy":
            assert resource["Properties"]["Roles"] == [{"Ref": "NodeRole"}, {"Ref": "HeadRole"}], name
            assert "ec2:" not in json.dumps(resource["Properties"]["PolicyDocument"]), name
    assert "ec2:" not in json.dumps(resources["NodeRole"])


def test_user_data_and_bootstrap_hold_no_secret(template: dict[str, Any]) -> None:
    user_data = template["Resources"]["ComputeLaunchTemplate"]["Properties"]["LaunchTemplateData"]["UserData"]
    script = bootstrap_ps1(SPEC)
    assert user_data == {"Fn::Base64": powershell.user_data(SPEC, script)}
    for text in (user_data["Fn::Base64"], script):
        for marker in (*SECRET_MARKERS, "SecretString ="):
            assert marker not in text
    # the head's deploy-time values come from its tags at boot (IMDSv2), not from the script
    assert "tags/instance/mpicloud:launch-template" in script and "lt-" not in script


# -- deployed on a moto server ------------------------------------------------------------------------------------


@dataclass
class Deployed:
    endpoint: str
    head_tags: dict[str, str]
    subnet: str
    group: str
    template_id: str
    body: str  # the template as deployed (for_moto's adaptations, the secret's ARN)

    def client(self, service: str) -> Any:
        return boto3.client(service, region_name=REGION, endpoint_url=self.endpoint)


@pytest.fixture(scope="module")
def deployed() -> Iterator[Deployed]:
    with pytest.MonkeyPatch.context() as patch, moto_server() as endpoint, \
            warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            patch.setenv(key, "testing")
        patch.setenv("AWS_ENDPOINT_URL", endpoint)  # for_moto's clients
        body = json.loads(TEMPLATE.read_text())
        for_moto(body, REGION, "/test/windows-2022")
        # moto has no AWS::SecretsManager::Secret: the deployed copy names a fixed ARN where the template Refs it
        text = json.dumps(body).replace('{"Ref": "AdminPassword"}', json.dumps(SECRET_ARN))
        # a bucket: moto turns the roles' unselected Fn::If policy entry into None
        cfn, _ = create_stack(text, STACK, {"AllowedSshCidr": "203.0.113.0/24", "BucketName": "my-simulation-data"},
                              REGION, endpoint)
        resources = {r["LogicalResourceId"]: r["PhysicalResourceId"]
                     for r in cfn.list_stack_resources(StackName=STACK)["StackResourceSummaries"]}
        ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=endpoint)
        [head] = [i for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]]
        yield Deployed(endpoint, _tags(head["Tags"]), resources["Subnet"], resources["SecurityGroup"],
                       resources["ComputeLaunchTemplate"], text)
    assert skipped_types(caught) <= MOTO_SKIPS


@dataclass
class Head:
    root: Path     # the runner root (runner.json)
    install: Path  # the Windows bundle unpacked, as the bootstrap does in C:\ProgramData\mpicloud
    libs: Path     # objlibs
    env: dict[str, str]


def _head_runner_json(head_tags: dict[str, str]) -> dict[str, Any]:
    """runner.json as the Windows head's bootstrap writes it: the rendered base config (taken from the script),
    with pool.aws's region from its parameter and launch template id and cluster from the instance tags the
    script reads over IMDS (the tag names taken from the script too)."""
    script = bootstrap_ps1(SPEC)
    [quoted] = re.findall(r"\$config = '(.*?)' \| ConvertFrom-Json\n", script, re.S)
    config: dict[str, Any] = json.loads(quoted.replace("''", "'"))
    read = dict(re.findall(r"\$config\.pool\.aws\.(\w+) = \[string\]\(Invoke-RestMethod -Uri \(\$imds \+ "
                           r"'/meta-data/' \+ 'tags/instance/([^']+)'\)", script))
    assert read == {"launch_template_id": TAG_LAUNCH_TEMPLATE, "cluster": CLUSTER_TAG}
    assert "$config.pool.aws.region = $Region" in script
    assert "$config.nodes =" not in script  # the head only: the pool launches the compute nodes
    # the SDKs (boto3) with the pinned pip, on the head only when there is no bucket
    assert "if ($NodeIndex -eq 0 -and -not (Test-Path (Join-Path $libs 'installed.ok'))) {" in script
    assert "--target $libs 'boto3==" in script
    config["pool"]["aws"].update({key: head_tags[tag] for key, tag in read.items()}, region=REGION)
    return config


@pytest.fixture()
def head(deployed: Deployed, tmp_path: Path) -> Head:
    root, install, libs = tmp_path / "shared" / ".mpicloud", tmp_path / "install", tmp_path / "objlibs"
    for folder in (root, libs, tmp_path / "home"):
        folder.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(runner_bundle("windows", compact=True, cloud="aws"))) as tar:
        tar.extractall(install, filter="data")
    assert not (install / "azure_nodes.py").exists()
    config = _head_runner_json(deployed.head_tags)
    assert config["object_libs"] == OBJECT_LIBS
    config["object_libs"] = str(libs)
    config["pool"]["aws"]["endpoint_url"] = deployed.endpoint
    (root / "runner.json").write_text(json.dumps(config))
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path / "home"),
           "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    return Head(root, install, libs, env)


def _action(head: Head, action: str, node: str) -> subprocess.CompletedProcess[str]:
    """The pool's own command for `action`, with this scratch head's places for the Windows paths."""
    config = json.loads((head.root / "runner.json").read_text())
    argv = [*config["pool"][f"{action}_command"], node]
    platform = SPEC.target.platform
    assert argv[:5] == [NODE_PYTHON["windows"], platform.path("ec2_nodes.py"), action, "--root",
                        "C:\\shared\\.mpicloud"]
    argv[:2] = [LOCAL_PYTHON, str(head.install / "ec2_nodes.py")]
    argv[4] = str(head.root)
    return subprocess.run(argv, env=head.env, capture_output=True, text=True, timeout=180, check=False)


def test_runner_json_pool_runs_ec2_nodes_under_the_windows_python(deployed: Deployed, head: Head) -> None:
    pool = json.loads((head.root / "runner.json").read_text())["pool"]
    names = [f"N{i}" for i in range(1, MAX + 1)]
    assert (pool["min"], pool["max"], pool["head_runs_jobs"]) == (0, MAX, False)
    assert json.loads((head.root / "runner.json").read_text())["nodes"] == [{"name": "N0", "slots": 0}]
    assert pool["aws"] == {
        "region": REGION, "launch_template_id": deployed.template_id, "cluster": STACK, "placement_group": None,
        "suspend": "stop", "endpoint_url": deployed.endpoint, "ready_ports": [22, LAUNCH_PORT],
        "addresses": dict(zip(names, node_addresses(SPEC.aws_options.subnet_cidr, MAX + 1)[1:], strict=True)),
        "node_tags": {n: {TAG_INDEX: str(i)} for i, n in enumerate(names, start=1)}}


def test_resume_launches_a_worker_that_joins_like_a_fixed_one_then_stop_and_terminate(
        deployed: Deployed, head: Head) -> None:
    config = json.loads((head.root / "runner.json").read_text())
    # node names do not resolve here: the ready-port wait is tested on its own (test_azure_nodes wait_ports)
    assert config["pool"]["aws"].pop("ready_ports") == [22, LAUNCH_PORT]
    (head.root / "runner.json").write_text(json.dumps(config))
    ec2 = deployed.client("ec2")
    done = _action(head, "resume", "N3")
    assert done.returncode == 0, done.stderr
    [made] = instances(ec2, "N3")
    assert done.stdout == f"resume N3: {made['InstanceId']}\n" and made["State"]["Name"] == "running"
    tags = _tags(made["Tags"])
    assert tags["aws:ec2launchtemplate:id"] == deployed.template_id
    assert (tags[CLUSTER_TAG], tags[NODE_TAG], tags["Name"], tags[TAG_INDEX]) == (STACK, "N3", f"{STACK}-N3", "3")
    for key in ("mpicloud:nodes", "mpicloud:slots", "mpicloud:ssm-prefix", "mpicloud:kms-key", TAG_SECRET):
        assert tags[key] == deployed.head_tags[key], key  # what its bootstrap reads (user data task)
    assert made["PrivateIpAddress"] == node_addresses(SPEC.aws_options.subnet_cidr, 4)[3]  # its hosts-file name
    assert made["SubnetId"] == deployed.subnet
    assert [g["GroupId"] for g in made["NetworkInterfaces"][0]["Groups"]] == [deployed.group]
    data = ec2.describe_instance_attribute(InstanceId=made["InstanceId"], Attribute="userData")["UserData"]["Value"]
    assert "Get-Md 'tags/instance/mpicloud:index'" in base64.b64decode(data).decode()
    assert _action(head, "suspend", "N3").stdout == f"suspend N3: {made['InstanceId']}\n"
    assert [i["State"]["Name"] for i in instances(ec2, "N3")] == ["stopped"]
    assert _action(head, "resume", "N3").stdout == f"resume N3: {made['InstanceId']}\n"  # its disk back
    config["pool"]["aws"]["suspend"] = "terminate"
    (head.root / "runner.json").write_text(json.dumps(config))
    assert _action(head, "suspend", "N3").stdout == f"suspend N3: {made['InstanceId']}\n"
    assert [i["State"]["Name"] for i in instances(ec2, "N3")] == ["terminated"]


def test_boto3_comes_from_object_libs(deployed: Deployed, head: Head) -> None:
    """ec2_nodes.py puts runner.json's object_libs on sys.path before it imports boto3: a stand-in boto3 there
    is the one it uses (Windows' embeddable Python has none of its own)."""
    (head.libs / "boto3.py").write_text("def client(*args, **kwargs):\n    raise OSError('boto3 from objlibs')\n")
    done = _action(head, "resume", "N4")
    assert done.returncode == 1 and done.stderr == "resume N4: OSError: boto3 from objlibs\n"


def test_the_deployed_head_policy_allows_only_this_template_and_cluster(deployed: Deployed) -> None:
    assert_head_policy(deployed.client("iam"), STACK, REGION, deployed.template_id)


def test_an_update_keeps_the_head_and_the_next_launch_uses_the_new_version(deployed: Deployed, head: Head) -> None:
    """Last in this module (it updates the shared stack): new parameter values make a new version of the compute
    launch template; the head instance and the template stay (moto applies no property update to an instance:
    that CloudFormation keeps the head rests on its own launch template, test_only_the_head_at_deploy...)."""
    cfn, ec2 = deployed.client("cloudformation"), deployed.client("ec2")

    def node0() -> list[str]:
        found = ec2.describe_instances(Filters=[{"Name": "tag:Name", "Values": [f"{STACK}-N0"]}])
        return [i["InstanceId"] for r in found["Reservations"] for i in r["Instances"]]

    before = node0()
    cfn.update_stack(StackName=STACK, TemplateBody=deployed.body, Capabilities=["CAPABILITY_IAM"], Parameters=[
        {"ParameterKey": k, "ParameterValue": v} for k, v in {
            "AllowedSshCidr": "203.0.113.0/24", "BucketName": "my-simulation-data", "SlotsPerNode": "4"}.items()])
    resources = {r["LogicalResourceId"]: r["PhysicalResourceId"]
                 for r in cfn.list_stack_resources(StackName=STACK)["StackResourceSummaries"]}
    assert resources["ComputeLaunchTemplate"] == deployed.template_id and node0() == before and len(before) == 1
    versions = ec2.describe_launch_template_versions(LaunchTemplateId=deployed.template_id)
    assert len(versions["LaunchTemplateVersions"]) == 2
    config = json.loads((head.root / "runner.json").read_text())
    config["pool"]["aws"].pop("ready_ports")
    (head.root / "runner.json").write_text(json.dumps(config))
    done = _action(head, "resume", "N5")
    assert done.returncode == 0, done.stderr
    [made] = instances(ec2, "N5")
    tags = _tags(made["Tags"])
    assert (tags["aws:ec2launchtemplate:version"], tags["mpicloud:slots"], tags[TAG_INDEX]) == ("2", "4", "5")
