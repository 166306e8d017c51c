"""The bucket IAM documents: least privilege by construction, checked by parliament and our s3:prefix evaluator."""

from __future__ import annotations

import json
from typing import Any

import pytest
from parliament import analyze_policy_string

from mpicloud.errors import RenderError
from mpicloud.render.iam import (
    assume_bucket_role_policy,
    bucket_access_policy,
    cross_account_trust_policy,
    iam_documents,
)
from mpicloud.render.iam_check import evaluate, list_scoping_problems
from mpicloud.spec import spec_from_dict
from mpicloud.spec.model import Bucket
from tests.specdata import aws_doc

BUCKET = Bucket(name="sim-data", input_prefix="input/", output_prefix="output/",
                kms_key_arn="arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
                role_arn="arn:aws:iam::111122223333:role/sim-data-access", external_id="ext-7f3a",
                trusted_account_id="444455556666")
ARN = "arn:aws:s3:::sim-data"
POLICY = bucket_access_policy(BUCKET)


@pytest.mark.parametrize(("prefix", "decision"), [
    ("input/", "allow"), ("input/case1/", "allow"), ("output/", "allow"), ("output/run1/x", "allow"),
    ("other/", "implicit-deny"), ("", "implicit-deny"), ("input", "implicit-deny"),
    ("input-old/", "implicit-deny"), ("outputs_secret/", "implicit-deny"),
])
def test_listing_is_limited_to_the_two_prefixes(prefix: str, decision: str) -> None:
    assert evaluate(POLICY, "s3:ListBucket", ARN, {"s3:prefix": prefix}) == decision


def test_listing_without_any_prefix_is_denied() -> None:
    assert evaluate(POLICY, "s3:ListBucket", ARN, {}) == "implicit-deny"


@pytest.mark.parametrize(("action", "key", "decision"), [
    ("s3:GetObject", "input/mesh.dat", "allow"),
    ("s3:PutObject", "input/mesh.dat", "implicit-deny"),
    ("s3:DeleteObject", "input/mesh.dat", "implicit-deny"),
    ("s3:GetObject", "output/r.h5", "allow"), ("s3:PutObject", "output/r.h5", "allow"),
    ("s3:DeleteObject", "output/r.h5", "allow"), ("s3:AbortMultipartUpload", "output/r.h5", "allow"),
    ("s3:ListMultipartUploadParts", "output/r.h5", "allow"),
    ("s3:GetObject", "other/secret.txt", "implicit-deny"), ("s3:PutObject", "other/x", "implicit-deny"),
    ("s3:GetObject", "input-old/x", "implicit-deny"), ("s3:PutBucketPolicy", "", "implicit-deny"),
])
def test_object_access_matrix(action: str, key: str, decision: str) -> None:
    resource = f"{ARN}/{key}" if key else ARN
    assert evaluate(POLICY, action, resource) == decision


def test_kms_only_when_a_key_is_given() -> None:
    actions = {a for s in POLICY["Statement"] for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])}
    assert {"kms:Decrypt", "kms:GenerateDataKey"} <= actions
    plain = bucket_access_policy(Bucket(name="sim-data"))
    assert not any("kms" in json.dumps(s) for s in plain["Statement"])


def test_no_wildcard_actions_and_no_bare_prefix() -> None:
    text = json.dumps(POLICY)
    assert '"s3:*"' not in text and '"*"' not in text
    assert list_scoping_problems(POLICY) == []


@pytest.mark.parametrize(("statement", "problem"), [
    ({"Effect": "Allow", "Action": "s3:ListBucket", "Resource": ARN}, "without an s3:prefix condition"),
    ({"Effect": "Allow", "Action": "s3:*", "Resource": ARN}, "without an s3:prefix condition"),
    ({"Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": ARN,
      "Condition": {"StringLike": {"s3:prefix": ["input", "input/*"]}}}, "also matches sibling prefixes"),
    ({"Effect": "Allow", "Action": "s3:ListBucket", "Resource": ARN,
      "Condition": {"StringEquals": {"s3:prefix": [""]}}}, "also matches sibling prefixes"),
])
def test_the_checker_catches_what_linters_miss(statement: dict[str, Any], problem: str) -> None:
    problems = list_scoping_problems({"Version": "2012-10-17", "Statement": [statement]})
    assert len(problems) == 1 and problem in problems[0]


def test_explicit_deny_wins_and_unknown_operators_are_refused() -> None:
    policy = {"Statement": [*POLICY["Statement"],
                            {"Effect": "Deny", "Action": "s3:GetObject", "Resource": f"{ARN}/input/secret*"}]}
    assert evaluate(policy, "s3:GetObject", f"{ARN}/input/secret.txt") == "deny"
    assert evaluate(policy, "s3:GetObject", f"{ARN}/input/mesh.dat") == "allow"
    odd = {"Statement": [{"Effect": "Allow", "Action": "s3:ListBucket", "Resource": ARN,
                          "Condition": {"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}}}]}
    with pytest.raises(ValueError, match="IpAddress"):
        evaluate(odd, "s3:ListBucket", ARN, {"aws:SourceIp": "10.1.1.1"})


@pytest.mark.parametrize("policy", [POLICY, bucket_access_policy(Bucket(name="sim-data")),
                                    bucket_access_policy(BUCKET, "aws-cn")])
def test_parliament_finds_nothing(policy: dict[str, Any]) -> None:
    findings = analyze_policy_string(json.dumps(policy), include_community_auditors=True).findings
    assert [(f.issue, f.detail) for f in findings] == []


def test_parliament_on_the_node_assume_policy() -> None:
    # sts:AssumeRole returns credentials by design (that is the grant); nothing else may be reported
    findings = analyze_policy_string(json.dumps(assume_bucket_role_policy(BUCKET)),
                                     include_community_auditors=True).findings
    assert [f.issue for f in findings] == ["CREDENTIALS_EXPOSURE"]
    assert analyze_policy_string(json.dumps(assume_bucket_role_policy(BUCKET))).findings == []


def test_cross_account_trust_needs_the_external_id() -> None:
    trust = cross_account_trust_policy(BUCKET)
    statement = trust["Statement"][0]
    assert statement["Principal"] == {"AWS": "arn:aws:iam::444455556666:root"}
    assert statement["Condition"] == {"StringEquals": {"sts:ExternalId": "ext-7f3a"}}
    assert evaluate(trust, "sts:AssumeRole", "*", {"sts:ExternalId": "ext-7f3a"}) == "allow"
    assert evaluate(trust, "sts:AssumeRole", "*", {"sts:ExternalId": "guess"}) == "implicit-deny"
    assert evaluate(trust, "sts:AssumeRole", "*", {}) == "implicit-deny"


def test_documents_per_grant_mode() -> None:
    base = aws_doc(bucket={"name": "sim-data"})
    assert set(iam_documents(spec_from_dict(base))) == {"bucket-access-policy", "node-trust-policy"}
    cross = {**base, "bucket": {"name": "sim-data", "grant": "cross_account_role", "external_id": "e1x",
                                "trusted_account_id": "444455556666", "role_arn": BUCKET.role_arn}}
    assert set(iam_documents(spec_from_dict(cross))) == {"bucket-access-policy", "bucket-role-trust-policy",
                                                         "node-assume-role-policy"}
    user = {**base, "cloud": "local", "bucket": {"name": "sim-data", "grant": "iam_user"}}
    assert set(iam_documents(spec_from_dict(user))) == {"bucket-access-policy"}
    with pytest.raises(RenderError, match="bucket"):
        iam_documents(spec_from_dict({"name": "cl", "nodes": 1, "cloud": "local"}))
