"""templates/cloudformation/bucket-access.json: linted, scanned, deployed on moto and used with its own key."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from cfnlint.api import ManualArgs, lint
from moto import mock_aws
from moto.core import enable_iam_authentication

from mpicloud.render.cfn_bucket import bucket_access_json, bucket_access_template
from mpicloud.render.iam_check import evaluate, list_scoping_problems
from tests.cloud.cfn_moto import create_stack, skipped_types

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "templates" / "cloudformation" / "bucket-access.json"
REGION = "eu-west-1"


def test_cfn_lint_reports_nothing() -> None:
    matches = lint(bucket_access_json(), config=ManualArgs(regions=[REGION, "us-east-1"]))
    assert [(m.rule.id, m.message) for m in matches] == []


def test_checkov_passes_without_skips() -> None:
    result = subprocess.run([sys.executable, "-m", "checkov.main", "-f", str(TEMPLATE), "--framework",
                             "cloudformation", "--skip-download", "--compact", "--quiet", "-o", "json"],
                            capture_output=True, text=True, timeout=300, check=False)
    report = json.loads(result.stdout)
    assert report["results"]["failed_checks"] == [], result.stdout
    assert report["summary"]["passed"] >= 5


def _resolve(value: Any, params: dict[str, str]) -> Any:
    """Resolve the Fn::Sub / Fn::If / Ref this template uses in its policy, as CloudFormation would."""
    if isinstance(value, list):
        return [v for v in (_resolve(x, params) for x in value) if v is not None]
    if not isinstance(value, dict):
        return value
    if "Fn::Sub" in value:
        text = value["Fn::Sub"]
        for key, val in {**params, "AWS::Partition": "aws"}.items():
            text = text.replace("${" + key + "}", val)
        return text
    if "Fn::If" in value:
        _, yes, no = value["Fn::If"]
        return _resolve(yes if params.get("KmsKeyArn") else no, params)
    if value == {"Ref": "AWS::NoValue"}:
        return None
    if "Ref" in value:
        return params[value["Ref"]]
    return {k: _resolve(v, params) for k, v in value.items()}


def test_the_template_policy_is_the_prefix_policy() -> None:
    resources = bucket_access_template()["Resources"]
    document = resources["BucketAccessPolicy"]["Properties"]["PolicyDocument"]
    policy = _resolve(document, {"BucketName": "sim-data", "InputPrefix": "in/", "OutputPrefix": "out/",
                                 "KmsKeyArn": ""})
    assert list_scoping_problems(policy) == []
    arn = "arn:aws:s3:::sim-data"
    assert evaluate(policy, "s3:ListBucket", arn, {"s3:prefix": "in/"}) == "allow"
    assert evaluate(policy, "s3:ListBucket", arn, {"s3:prefix": "other/"}) == "implicit-deny"
    assert evaluate(policy, "s3:PutObject", f"{arn}/in/x") == "implicit-deny"
    assert evaluate(policy, "s3:PutObject", f"{arn}/out/x") == "allow"
    assert not any("kms" in json.dumps(s) for s in policy["Statement"])
    assert resources["BucketKmsPolicy"]["Condition"] == "HasKmsKey"
    with_kms = _resolve(resources["BucketKmsPolicy"]["Properties"]["PolicyDocument"],
                        {"KmsKeyArn": "arn:aws:kms:eu-west-1:111122223333:key/k"})
    assert evaluate(with_kms, "kms:GenerateDataKey", "arn:aws:kms:eu-west-1:111122223333:key/k") == "allow"


def test_no_secret_in_outputs() -> None:
    outputs = json.dumps(bucket_access_template()["Outputs"])
    assert "SecretAccessKey" not in outputs


#: resource types moto's CloudFormation skips with a warning (checked by cfn-lint and checkov only)
MOTO_SKIPS = {"AWS::SecretsManager::Secret"}


@pytest.fixture()
def aws() -> Iterator[None]:
    """A fresh moto account."""
    with mock_aws():
        yield


def _deploy(params: dict[str, str]) -> tuple[dict[str, str], set[str]]:
    """Create the stack; its outputs and the resource types moto skipped."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        _, stack = create_stack(TEMPLATE.read_text(), "bucket-access", params, REGION)
    skipped = skipped_types(caught)
    assert skipped <= MOTO_SKIPS, f"moto silently skipped {skipped - MOTO_SKIPS}"
    return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}, skipped


def iam_client() -> Any:
    return boto3.client("iam", region_name=REGION)


def _seed_bucket() -> None:
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket="sim-data", CreateBucketConfiguration={"LocationConstraint": REGION})
    s3.put_object(Bucket="sim-data", Key="input/mesh.dat", Body=b"mesh")


def test_iam_user_stack_on_moto_grants_exactly_the_prefixes(aws: None) -> None:
    _seed_bucket()
    outputs, skipped = _deploy({"BucketName": "sim-data", "Grant": "iam_user"})
    assert skipped == MOTO_SKIPS and set(outputs) == {"PolicyArn"}   # KeySecretArn needs the skipped secret
    iam = boto3.client("iam", region_name=REGION)
    (user,) = [u["UserName"] for u in iam.list_users()["Users"]]
    attached = [p["PolicyArn"] for p in iam.list_attached_user_policies(UserName=user)["AttachedPolicies"]]
    assert attached == [outputs["PolicyArn"]]     # no KMS policy without a key
    # moto skips the Secrets Manager secret, so the test makes a second key for the stack's user
    key = iam.create_access_key(UserName=user)["AccessKey"]
    s3 = boto3.client("s3", region_name=REGION, aws_access_key_id=key["AccessKeyId"],
                      aws_secret_access_key=key["SecretAccessKey"])
    with enable_iam_authentication():
        assert s3.get_object(Bucket="sim-data", Key="input/mesh.dat")["Body"].read() == b"mesh"
        s3.put_object(Bucket="sim-data", Key="output/r.txt", Body=b"r")
        for call, kwargs in ((s3.put_object, {"Key": "input/x", "Body": b"x"}),
                             (s3.get_object, {"Key": "other/x"})):
            with pytest.raises(ClientError, match="AccessDenied"):
                call(Bucket="sim-data", **kwargs)


def test_cross_account_stack_on_moto(aws: None) -> None:
    outputs, skipped = _deploy({"BucketName": "sim-data", "Grant": "cross_account_role", "ExternalId": "ext-7f3a",
                       "TrustedPrincipalArn": "arn:aws:iam::444455556666:role/mpicloud-nodes"})
    assert set(outputs) == {"PolicyArn", "RoleArn"} and skipped == set()
    role = iam_client().get_role(RoleName=outputs["RoleArn"].rsplit("/", 1)[-1])["Role"]
    trust = role["AssumeRolePolicyDocument"]
    trust = json.loads(trust) if isinstance(trust, str) else trust
    statement = trust["Statement"][0]
    attached = iam_client().list_attached_role_policies(RoleName=role["RoleName"])["AttachedPolicies"]
    assert [p["PolicyArn"] for p in attached] == [outputs["PolicyArn"]]
    assert statement["Condition"] == {"StringEquals": {"sts:ExternalId": "ext-7f3a"}}
    assert statement["Principal"] == {"AWS": "arn:aws:iam::444455556666:role/mpicloud-nodes"}
