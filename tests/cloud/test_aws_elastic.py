"""templates/cloudformation/cluster-elastic.json: cfn-lint and checkov clean, the head alone at deploy, a launch
template for compute nodes, the head's node-actions policy; deployed on a moto server, then the head's real
ec2_nodes.py (under /usr/bin/python3, with the runner.json its cluster-files.sh writes from the deployed head's
tags) starts, stops and terminates compute nodes from that launch template."""

from __future__ import annotations

import base64
import gzip
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from mpicloud.assets import provision_dir, runner_files
from mpicloud.protocol.pool import CLUSTER_TAG, NODE_TAG
from mpicloud.render.aws import TAG_LAUNCH_TEMPLATE, TAG_NODES
from mpicloud.render.aws.cloud_init import cloud_config, node_addresses
from mpicloud.render.cloudformation import cluster_template, elastic_template_json, elastic_template_spec
from mpicloud.render.elastic_iam import node_actions_policy
from mpicloud.render.iam_check import evaluate
from mpicloud.spec.load import spec_from_dict
from tests.cloud.cfn_moto import create_stack, for_moto
from tests.integration.s3server import moto_server

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "templates" / "cloudformation" / "cluster-elastic.json"
REGION, STACK = "eu-west-1", "burst"
SPEC = elastic_template_spec()
MAX = 16
#: nodes have public IPs (SSH from AllowedSshCidr only, packages without a NAT gateway): docs/aws-linux.md
CHECKOV_SKIPS = {"CKV_AWS_88"}
SECRET_MARKERS = ("PRIVATE KEY-----", "aws_secret_access_key", "AKIA", "sessiontoken", "smb-password=")


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return dict(json.loads(TEMPLATE.read_text()))


def _user_data(encoded: str) -> str:
    return gzip.decompress(base64.b64decode(encoded)).decode()


def test_checked_in_template_is_the_rendered_one() -> None:
    assert TEMPLATE.read_text() == elastic_template_json()
    assert SPEC.elastic is not None and (SPEC.elastic.min, SPEC.elastic.max) == (0, MAX)


def test_cfn_lint_reports_nothing(template: dict[str, Any]) -> None:
    assert_lints_clean(template)


def assert_lints_clean(template: dict[str, Any]) -> None:
    """cfn-lint finds nothing in an elastic template, and does find a broken compute launch template."""
    from cfnlint.api import ManualArgs, lint

    matches = lint(json.dumps(template), config=ManualArgs(regions=["us-east-1", "eu-west-1"]))
    assert [(m.rule.id, m.message) for m in matches] == []
    broken = json.loads(json.dumps(template))
    broken["Resources"]["ComputeLaunchTemplate"]["Properties"]["LaunchTemplateData"]["InstanceType"] = {
        "Ref": "Nope"}
    assert lint(json.dumps(broken), config=ManualArgs(regions=["us-east-1"]))


def test_the_efa_variant_launches_compute_nodes_on_efa_interfaces() -> None:
    from cfnlint.api import ManualArgs, lint

    document = {**SPEC.model_dump(mode="json", exclude_none=True), "size": "c5n.18xlarge"}
    document["aws"] = {**document["aws"], "efa": True}
    efa = cluster_template(spec_from_dict(document), efa=True)
    data = efa["Resources"]["ComputeLaunchTemplate"]["Properties"]["LaunchTemplateData"]
    assert [i["InterfaceType"] for i in data["NetworkInterfaces"]] == ["efa"]
    assert efa["Resources"]["Node0"]["Properties"]["NetworkInterfaces"] == [
        {"DeviceIndex": "0", "NetworkInterfaceId": {"Ref": "Node0Efa"}}]
    assert [(m.rule.id, m.message) for m in lint(json.dumps(efa), config=ManualArgs(regions=["us-east-1"]))] == []


def test_checkov_is_clean_apart_from_justified_skips() -> None:
    assert_checkov_clean(TEMPLATE, CHECKOV_SKIPS)


def assert_checkov_clean(path: Path, skips: set[str]) -> None:
    """checkov fails no check on the template at `path` but the justified `skips`, and passes many."""
    checkov = Path(sys.executable).with_name("checkov")
    done = subprocess.run([str(checkov), "-f", str(path), "--framework", "cloudformation", "--skip-download",
                           "--quiet", "--compact", "-o", "json"], capture_output=True, text=True, timeout=300)
    report = json.loads(done.stdout)
    failed = {f["check_id"] for f in report["results"]["failed_checks"]}
    assert failed <= skips, failed
    assert report["summary"]["passed"] > 50


def head_only(template: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """An elastic template's resources (Node0 its only instance, no node count) and its compute launch template's
    data."""
    resources = template["Resources"]
    assert [n for n, r in resources.items() if r["Type"] == "AWS::EC2::Instance"] == ["Node0"]
    assert "NodeCount" not in template["Parameters"] and not any(c.startswith("HasNode")
                                                                 for c in template["Conditions"])
    return resources, resources["ComputeLaunchTemplate"]["Properties"]["LaunchTemplateData"]


def test_only_the_head_at_deploy_and_a_launch_template_for_the_rest(template: dict[str, Any]) -> None:
    resources, data = head_only(template)
    assert data["ImageId"] == resources["Node0"]["Properties"]["ImageId"]
    assert data["InstanceType"] == {"Ref": "InstanceType"} and data["KeyName"] == {"Ref": "KeyName"}
    assert data["IamInstanceProfile"] == {"Arn": {"Fn::GetAtt": ["NodeProfile", "Arn"]}}  # the workers' role
    assert data["NetworkInterfaces"] == [{"DeviceIndex": 0, "SubnetId": {"Ref": "Subnet"},
                                          "Groups": [{"Ref": "SecurityGroup"}], "AssociatePublicIpAddress": True,
                                          "DeleteOnTermination": True}]
    assert data["Placement"] == {"GroupName": {"Ref": "PlacementGroup"}}
    assert data["MetadataOptions"]["HttpTokens"] == "required"
    assert data["BlockDeviceMappings"][0]["Ebs"]["Encrypted"] is True
    tags = {t["Key"]: t["Value"] for t in data["TagSpecifications"][0]["Tags"]}
    assert data["TagSpecifications"][0]["ResourceType"] == "instance"
    assert tags[CLUSTER_TAG] == {"Ref": "AWS::StackName"} and tags[TAG_NODES] == str(MAX + 1)
    head = resources["Node0"]["Properties"]
    assert head["IamInstanceProfile"] == {"Ref": "HeadProfile"}
    assert {"Key": TAG_LAUNCH_TEMPLATE, "Value": {"Ref": "ComputeLaunchTemplate"}} in head["Tags"]
    # the head keeps the fixed template of a fixed cluster's node0: an update to the compute nodes' template
    # (new worker user data, a newer image) makes a new version of ComputeLaunchTemplate, never a new head
    assert head["LaunchTemplate"]["LaunchTemplateId"] == {"Ref": "NodeLaunchTemplate"}
    assert "ComputeLaunchTemplate" not in json.dumps(head["LaunchTemplate"])
    assert "UserData" not in resources["NodeLaunchTemplate"]["Properties"]["LaunchTemplateData"]


def test_only_the_head_role_may_act_on_nodes(template: dict[str, Any]) -> None:
    resources = template["Resources"]
    actions = resources["HeadNodeActionsPolicy"]["Properties"]
    assert actions["Roles"] == [{"Ref": "HeadRole"}]
    for name, resource in resources.items():
        if resource["Type"] == "AWS::IAM::Policy" and name != "HeadNodeActionsPolicy":
            assert resource["Properties"]["Roles"] == [{"Ref": "NodeRole"}, {"Ref": "HeadRole"}], name
            assert "ec2:" not in json.dumps(resource["Properties"]["PolicyDocument"]), name
    assert "ec2:" not in json.dumps(resources["NodeRole"])
    key_users = resources["SecretsKey"]["Properties"]["KeyPolicy"]["Statement"][1]["Principal"]["AWS"]
    assert key_users == [{"Fn::GetAtt": ["NodeRole", "Arn"]}, {"Fn::GetAtt": ["HeadRole", "Arn"]}]


def test_user_data_of_head_and_worker_hold_no_secret(template: dict[str, Any]) -> None:
    resources = template["Resources"]
    head = _user_data(resources["Node0"]["Properties"]["UserData"])
    worker = _user_data(resources["ComputeLaunchTemplate"]["Properties"]["LaunchTemplateData"]["UserData"])
    assert head == cloud_config(SPEC, 0, node_addresses(SPEC.aws_options.subnet_cidr, MAX + 1))
    assert worker == cloud_config(SPEC, None, node_addresses(SPEC.aws_options.subnet_cidr, MAX + 1))
    for text in (head, worker):
        for marker in SECRET_MARKERS:
            assert marker not in text
    # the head's deploy-time values come from its tags at boot, not from its user data
    assert "lt-" not in head and "launch_template_id\": null" in head.replace("\n", " ").replace("  ", "")


# -- deployed on a moto server ------------------------------------------------------------------------------------


@dataclass
class Deployed:
    endpoint: str
    outputs: dict[str, str]
    head_tags: dict[str, str]
    subnet: str
    group: str
    template_id: str
    body: dict[str, Any]  # the template as deployed (for_moto's adaptations)

    def client(self, service: str) -> Any:
        return boto3.client(service, region_name=REGION, endpoint_url=self.endpoint)


@pytest.fixture(scope="module")
def deployed() -> Iterator[Deployed]:
    with pytest.MonkeyPatch.context() as patch, moto_server() as endpoint:
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            patch.setenv(key, "testing")
        patch.setenv("AWS_ENDPOINT_URL", endpoint)  # for_moto's clients
        body = json.loads(TEMPLATE.read_text())
        for_moto(body, REGION, "/test/debian-12")
        ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=endpoint)
        ec2.create_key_pair(KeyName="me")
        # a bucket: moto turns the roles' unselected Fn::If policy entry into None
        cfn, stack = create_stack(json.dumps(body), STACK, {
            "KeyName": "me", "AllowedSshCidr": "203.0.113.0/24", "BucketName": "my-simulation-data"}, REGION, endpoint)
        resources = {r["LogicalResourceId"]: r["PhysicalResourceId"]
                     for r in cfn.list_stack_resources(StackName=STACK)["StackResourceSummaries"]}
        [head] = [i for r in ec2.describe_instances()["Reservations"] for i in r["Instances"]]
        yield Deployed(endpoint, {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]},
                       {t["Key"]: t["Value"] for t in head["Tags"]}, resources["Subnet"],
                       resources["SecurityGroup"], resources["ComputeLaunchTemplate"], body)


def instances(ec2: Any, node: str) -> list[dict[str, Any]]:
    found = ec2.describe_instances(Filters=[{"Name": f"tag:{NODE_TAG}", "Values": [node]}])
    return [i for r in found["Reservations"] for i in r["Instances"]]


FAKE_SSH = """#!/bin/bash
# the runner's share probe: logs its arguments; the node answers once $READY_DIR/<host> exists
echo "$*" >> "$READY_DIR/probes.log"
for arg; do [ -e "$READY_DIR/$arg" ] && exit 0; done
exit 255
"""


@dataclass
class Head:
    root: Path     # the runner root (runner.json)
    opt: Path      # the runner's files as fetch-runner.sh installs them in /opt/mpicloud
    env: dict[str, str]
    ready: Path


@pytest.fixture()
def head(deployed: Deployed, tmp_path: Path) -> Head:
    """The head's runner.json as its boot writes it: cluster-files.sh (real) run on the runner.base.json of the
    deployed head's user data, with node.env holding the deployed head's instance tags (what node-env.sh reads
    over IMDS); endpoint_url added so the node actions reach moto. A stand-in `ssh` answers the share probe."""
    template = json.loads(TEMPLATE.read_text())
    files = {f["path"]: f["content"] for f in yaml.safe_load(
        _user_data(template["Resources"]["Node0"]["Properties"]["UserData"]))["write_files"]}
    sysroot, shared = tmp_path / "root", tmp_path / "shared"
    (sysroot / "etc" / "mpicloud").mkdir(parents=True)
    (sysroot / "opt" / "mpicloud").mkdir(parents=True)
    (sysroot / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
    (sysroot / "etc" / "environment").write_text("")
    (sysroot / "opt" / "mpicloud" / "runner.base.json").write_text(files["/opt/mpicloud/runner.base.json"])
    tags = deployed.head_tags
    (sysroot / "etc" / "mpicloud" / "node.env").write_text(
        f"MPICLOUD_COUNT={tags['mpicloud:nodes']}\nMPICLOUD_SLOTS={tags['mpicloud:slots']}\n"
        f"MPICLOUD_SSM_PREFIX={tags['mpicloud:ssm-prefix']}\nMPICLOUD_IDLE_MINUTES={tags['mpicloud:idle-minutes']}\n"
        f"MPICLOUD_KMS_KEY={tags['mpicloud:kms-key']}\nMPICLOUD_REGION={REGION}\n"
        f"MPICLOUD_LAUNCH_TEMPLATE={tags[TAG_LAUNCH_TEMPLATE]}\nMPICLOUD_CLUSTER={tags[CLUSTER_TAG]}\n")
    user = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
    ips = node_addresses(SPEC.aws_options.subnet_cidr, MAX + 1)
    done = subprocess.run(["bash", str(provision_dir() / "linux" / "cluster-files.sh"), "0", user, str(shared),
                           *ips], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "MPICLOUD_SYSROOT": str(sysroot)})
    assert done.returncode == 0, done.stderr
    root = shared / ".mpicloud"
    config = json.loads((root / "runner.json").read_text())
    config["pool"]["aws"]["endpoint_url"] = deployed.endpoint
    (root / "runner.json").write_text(json.dumps(config))
    bin_dir, ready, home = tmp_path / "bin", tmp_path / "ready", tmp_path / "home"
    for folder in (bin_dir, ready, home / ".ssh"):
        folder.mkdir(parents=True)
    (bin_dir / "ssh").write_text(FAKE_SSH)
    (bin_dir / "ssh").chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(home), "READY_DIR": str(ready),
           "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    opt = tmp_path / "opt"
    for name, data in runner_files().items():
        (opt / name).parent.mkdir(parents=True, exist_ok=True)
        (opt / name).write_bytes(data)
    return Head(root, opt, env, ready)


def _action(head: Head, action: str, node: str) -> subprocess.Popen[str]:
    config = json.loads((head.root / "runner.json").read_text())
    argv = [*config["pool"][f"{action}_command"], node]
    assert argv[:2] == ["/usr/bin/python3", "/opt/mpicloud/ec2_nodes.py"]
    assert argv[2:5] == [action, "--root", "/shared/.mpicloud"]
    argv[1], argv[4] = str(head.opt / "ec2_nodes.py"), str(head.root)  # this scratch head's places
    return subprocess.Popen(argv, env=head.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _done(proc: subprocess.Popen[str], timeout: float = 120) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return out


def test_runner_json_names_the_deployed_template_and_cluster(deployed: Deployed, head: Head) -> None:
    config = json.loads((head.root / "runner.json").read_text())
    pool = config["pool"]
    assert config["nodes"] == [{"name": "node0", "slots": 0}]  # the head runs no jobs
    assert (pool["min"], pool["max"], pool["head_runs_jobs"]) == (0, MAX, False)
    assert pool["aws"] == {
        "region": REGION, "launch_template_id": deployed.template_id, "cluster": STACK, "placement_group": None,
        "suspend": "stop", "endpoint_url": deployed.endpoint,
        "addresses": dict(zip([f"node{i}" for i in range(1, MAX + 1)],
                              node_addresses(SPEC.aws_options.subnet_cidr, MAX + 1)[1:], strict=True))}
    assert deployed.outputs["ComputeLaunchTemplateId"] == deployed.template_id
    assert pool["resume_command"] == ["/usr/bin/python3", "/opt/mpicloud/ec2_nodes.py", "resume", "--root",
                                      "/shared/.mpicloud"]


def test_resume_launches_from_the_deployed_template_and_returns_once_the_node_is_usable(
        deployed: Deployed, head: Head) -> None:
    ec2 = deployed.client("ec2")
    proc = _action(head, "resume", "node1")
    log = head.ready / "probes.log"
    deadline = time.monotonic() + 60
    while not (log.is_file() and "node1" in log.read_text()):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "resume never probed the node"
        time.sleep(0.2)
    time.sleep(1.0)
    assert proc.poll() is None  # running, but not usable yet: resume has not returned
    [made] = instances(ec2, "node1")
    assert made["State"]["Name"] == "running"
    (head.ready / "node1").touch()  # its boot finished and it sees the share
    assert _done(proc).startswith(f"resume node1: {made['InstanceId']}")
    probe = log.read_text().splitlines()[0]
    assert probe == ("-o BatchMode=yes -o ConnectTimeout=15 node1 test -f /var/lib/cloud/instance/boot-finished "
                     "-a -f /shared/.mpicloud/share-marker")
    tags = {t["Key"]: t["Value"] for t in made["Tags"]}
    assert tags["aws:ec2launchtemplate:id"] == deployed.template_id
    assert tags[CLUSTER_TAG] == STACK and tags[NODE_TAG] == "node1" and tags["Name"] == f"{STACK}-node1"
    # what the worker reads at boot (node-env.sh) came with the launch template
    for key in ("mpicloud:nodes", "mpicloud:slots", "mpicloud:ssm-prefix", "mpicloud:kms-key"):
        assert tags[key] == deployed.head_tags[key], key
    assert made["PrivateIpAddress"] == node_addresses(SPEC.aws_options.subnet_cidr, 2)[1]  # its /etc/hosts name
    assert made["SubnetId"] == deployed.subnet
    [interface] = made["NetworkInterfaces"]
    assert [g["GroupId"] for g in interface["Groups"]] == [deployed.group]
    assert made["KeyName"] == "me"
    # moto does not apply a launch template's instance profile: the deployed template names the nodes' profile
    version = ec2.describe_launch_template_versions(LaunchTemplateId=deployed.template_id, Versions=["$Default"])
    profile = version["LaunchTemplateVersions"][0]["LaunchTemplateData"]["IamInstanceProfile"]["Arn"]
    profiles = deployed.client("iam").list_instance_profiles()["InstanceProfiles"]
    [role] = [p["Roles"][0]["RoleName"] for p in profiles if p["Arn"] == profile]
    assert role.startswith(f"{STACK}-NodeRole")
    data = ec2.describe_instance_attribute(InstanceId=made["InstanceId"], Attribute="userData")
    template = json.loads(TEMPLATE.read_text())
    assert data["UserData"]["Value"] == \
        template["Resources"]["ComputeLaunchTemplate"]["Properties"]["LaunchTemplateData"]["UserData"]


def test_suspend_stops_then_resume_starts_the_same_instance_and_terminate_forgets_its_host_key(
        deployed: Deployed, head: Head) -> None:
    ec2 = deployed.client("ec2")
    (head.ready / "node2").touch()
    first = _done(_action(head, "resume", "node2")).split()[-1]
    assert _done(_action(head, "suspend", "node2")) == f"suspend node2: {first}\n"
    assert [i["State"]["Name"] for i in instances(ec2, "node2")] == ["stopped"]
    assert _done(_action(head, "resume", "node2")).split()[-1] == first  # its disk back
    # terminate: the next resume is a fresh instance with a new host key, so the old one is forgotten
    config = json.loads((head.root / "runner.json").read_text())
    config["pool"]["aws"]["suspend"] = "terminate"
    (head.root / "runner.json").write_text(json.dumps(config))
    key = Path(head.env["HOME"]) / "key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    public = " ".join(key.with_suffix(".pub").read_text().split()[:2])
    known = Path(head.env["HOME"]) / ".ssh" / "known_hosts"
    known.write_text(f"node2 {public}\n10.0.0.12 {public}\nnode3 {public}\n")
    assert _done(_action(head, "suspend", "node2")) == f"suspend node2: {first}\n"
    assert [i["State"]["Name"] for i in instances(ec2, "node2")] == ["terminated"]
    fresh = _done(_action(head, "resume", "node2")).split()[-1]
    assert fresh != first
    assert known.read_text() == f"node3 {public}\n"
    assert _done(_action(head, "suspend", "node2")) == f"suspend node2: {fresh}\n"


def test_the_deployed_head_policy_allows_only_this_template_and_cluster(deployed: Deployed) -> None:
    assert_head_policy(deployed.client("iam"), STACK, REGION, deployed.template_id)


def assert_head_policy(iam: Any, stack: str, region: str, template_id: str) -> None:
    """The deployed head role's node-actions policy (read back from IAM) is node_actions_policy with the deployed
    ARNs, the node role has none, and the IAM evaluator allows only the cluster's template, tag and node role."""
    roles = {r["RoleName"]: r for r in iam.list_roles()["Roles"]}
    head_role = next(n for n in roles if "HeadRole" in n)
    node_role = next(n for n in roles if "NodeRole" in n)
    policy = iam.get_role_policy(RoleName=head_role, PolicyName="node-actions")["PolicyDocument"]
    account = roles[node_role]["Arn"].split(":")[4]
    assert policy == node_actions_policy(stack, region, account, template_id, roles[node_role]["Arn"])
    assert "node-actions" not in iam.list_role_policies(RoleName=node_role)["PolicyNames"]
    ec2 = f"arn:aws:ec2:{region}:{account}"
    mine, other = f"{ec2}:launch-template/{template_id}", f"{ec2}:launch-template/lt-0other"
    instance = f"{ec2}:instance/i-0abc"
    tagged = {"ec2:LaunchTemplate": mine, f"aws:RequestTag/{CLUSTER_TAG}": stack}
    assert evaluate(policy, "ec2:RunInstances", mine, {"ec2:LaunchTemplate": mine}) == "allow"
    assert evaluate(policy, "ec2:RunInstances", instance, tagged) == "allow"
    assert evaluate(policy, "ec2:RunInstances", other, {"ec2:LaunchTemplate": other}) == "implicit-deny"
    assert evaluate(policy, "ec2:RunInstances", instance, {**tagged, "ec2:LaunchTemplate": other}) == "implicit-deny"
    assert evaluate(policy, "ec2:RunInstances", instance, {"ec2:LaunchTemplate": mine}) == "implicit-deny"
    assert evaluate(policy, "ec2:RunInstances", instance,
                    {**tagged, f"aws:RequestTag/{CLUSTER_TAG}": "other"}) == "implicit-deny"
    for action in ("ec2:StartInstances", "ec2:StopInstances", "ec2:TerminateInstances"):
        assert evaluate(policy, action, instance, {f"ec2:ResourceTag/{CLUSTER_TAG}": stack}) == "allow"
        assert evaluate(policy, action, instance, {f"ec2:ResourceTag/{CLUSTER_TAG}": "other"}) == "implicit-deny"
        assert evaluate(policy, action, instance, {}) == "implicit-deny"
    assert evaluate(policy, "iam:PassRole", roles[node_role]["Arn"],
                    {"iam:PassedToService": "ec2.amazonaws.com"}) == "allow"
    assert evaluate(policy, "iam:PassRole", roles[head_role]["Arn"],
                    {"iam:PassedToService": "ec2.amazonaws.com"}) == "implicit-deny"


def test_a_broken_runner_json_or_command_line_is_one_line_naming_the_field(deployed: Deployed, head: Head) -> None:
    config = json.loads((head.root / "runner.json").read_text())
    del config["pool"]["aws"]["launch_template_id"]
    (head.root / "runner.json").write_text(json.dumps(config))
    proc = _action(head, "resume", "node3")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and out == ""
    assert err == f"resume node3: ValueError: {head.root / 'runner.json'}: pool.aws.launch_template_id is missing\n"
    assert instances(deployed.client("ec2"), "node3") == []
    done = subprocess.run(["/usr/bin/python3", str(head.opt / "ec2_nodes.py"), "reboot", "node3"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2 and done.stderr == "usage: ec2_nodes.py resume|suspend --root ROOT NODE\n"


def test_a_second_deploy_and_an_update_keep_the_head_and_reach_the_next_launch(deployed: Deployed,
                                                                               head: Head) -> None:
    """Last in this module (it updates the shared stack): the same template again, then new parameter values
    (slots, idle shutdown). The head instance and the launch template stay; the update is a new version of the
    launch template, which the next launch uses. (moto applies no property update to an existing instance, so
    that the head is not replaced in real CloudFormation rests on the template: test_only_the_head_at_deploy...)"""
    cfn, ec2, body = deployed.client("cloudformation"), deployed.client("ec2"), deployed.body

    def node0() -> str:
        return str(next(i["InstanceId"] for r in ec2.describe_instances(Filters=[
            {"Name": "tag:Name", "Values": [f"{STACK}-node0"]}])["Reservations"] for i in r["Instances"]))

    before = node0()
    parameters = {"KeyName": "me", "AllowedSshCidr": "203.0.113.0/24", "BucketName": "my-simulation-data"}
    for extra, versions in (({}, 1), ({"IdleShutdownMinutes": "30", "SlotsPerNode": "4"}, 2)):
        cfn.update_stack(StackName=STACK, TemplateBody=json.dumps(body), Capabilities=["CAPABILITY_IAM"],
                         Parameters=[{"ParameterKey": k, "ParameterValue": v}
                                     for k, v in {**parameters, **extra}.items()])
        # (list_stacks: moto fails to render this stack's Outputs after an update with new parameter values)
        assert [s["StackName"] for s in cfn.list_stacks(StackStatusFilter=["UPDATE_COMPLETE"])[
            "StackSummaries"]] == [STACK]
        resources = {r["LogicalResourceId"]: r["PhysicalResourceId"]
                     for r in cfn.list_stack_resources(StackName=STACK)["StackResourceSummaries"]}
        assert resources["ComputeLaunchTemplate"] == deployed.template_id and node0() == before
        listed = ec2.describe_launch_template_versions(LaunchTemplateId=deployed.template_id)
        assert len(listed["LaunchTemplateVersions"]) == versions
    (head.ready / "node5").touch()
    launched = _done(_action(head, "resume", "node5")).split()[-1]
    [made] = [i for i in instances(ec2, "node5") if i["InstanceId"] == launched]
    tags = {t["Key"]: t["Value"] for t in made["Tags"]}
    assert (tags["aws:ec2launchtemplate:version"], tags["mpicloud:slots"], tags["mpicloud:idle-minutes"]) == (
        "2", "4", "30")
