"""IAM documents for the customer's bucket, from one function used by Pulumi, CloudFormation and tests."""

from __future__ import annotations

from typing import Any

from mpicloud.errors import RenderError
from mpicloud.spec.model import Bucket, ClusterSpec


def bucket_arn(bucket: Bucket, partition: str = "aws") -> str:
    """ARN of the bucket itself (what ListBucket and GetBucketLocation are authorised on)."""
    return f"arn:{partition}:s3:::{bucket.name}"


def bucket_access_policy(bucket: Bucket, partition: str = "aws") -> dict[str, Any]:
    """Least privilege: list only the two prefixes, read the input prefix, read-write the output prefix."""
    statements = prefix_statements(bucket_arn(bucket, partition), bucket.input_prefix, bucket.output_prefix)
    if bucket.kms_key_arn:
        statements.append(kms_statement(bucket.kms_key_arn))
    return {"Version": "2012-10-17", "Statement": statements}


def prefix_statements(arn: str, inp: str, out: str) -> list[dict[str, Any]]:
    """The S3 statements for a bucket ARN and two prefixes (plain strings or template references)."""
    return [
        {"Sid": "BucketLocation", "Effect": "Allow", "Action": "s3:GetBucketLocation", "Resource": arn},
        {"Sid": "ListOnlyOurPrefixes", "Effect": "Allow", "Action": "s3:ListBucket", "Resource": arn,
         "Condition": {"StringLike": {"s3:prefix": [inp, f"{inp}*", out, f"{out}*"]}}},
        {"Sid": "ReadInput", "Effect": "Allow", "Action": "s3:GetObject", "Resource": f"{arn}/{inp}*"},
        {"Sid": "ReadWriteOutput", "Effect": "Allow",
         "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject",
                    "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
         "Resource": f"{arn}/{out}*"},
    ]


def kms_statement(key_arn: Any) -> dict[str, Any]:
    """Use of the bucket's SSE-KMS key: Decrypt for reads (and multipart completion), GenerateDataKey for writes."""
    return {"Sid": "UseBucketKey", "Effect": "Allow", "Action": ["kms:Decrypt", "kms:GenerateDataKey"],
            "Resource": key_arn}


def ec2_trust_policy() -> dict[str, Any]:
    """Trust policy letting EC2 instances assume the node role (instance profile)."""
    return {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]}


def cross_account_trust_policy(bucket: Bucket, partition: str = "aws") -> dict[str, Any]:
    """Trust policy of the customer's bucket role: only the cluster's node role (or account), only with the
    agreed ExternalId."""
    principal = bucket.trusted_principal_arn or (
        f"arn:{partition}:iam::{bucket.trusted_account_id}:root" if bucket.trusted_account_id else None)
    if not (principal and bucket.external_id):
        raise RenderError("bucket.external_id and bucket.trusted_principal_arn (or bucket.trusted_account_id) "
                          "are needed for a cross-account role")
    return {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Action": "sts:AssumeRole", "Principal": {"AWS": principal},
        "Condition": {"StringEquals": {"sts:ExternalId": bucket.external_id}}}]}


def assume_bucket_role_policy(bucket: Bucket) -> dict[str, Any]:
    """What the cluster's node role needs for a cross-account grant: assume the customer's role, nothing else."""
    return {"Version": "2012-10-17", "Statement": [assume_role_statement(bucket_role_arn(bucket))]}


def bucket_role_arn(bucket: Bucket) -> str:
    """The customer's role for a cross-account grant, or a RenderError naming the missing field."""
    if not bucket.role_arn:
        raise RenderError("bucket.role_arn is needed: the ARN of the role the customer created for the cluster")
    return bucket.role_arn


def assume_role_statement(role_arn: Any) -> dict[str, Any]:
    """sts:AssumeRole on exactly one role (an ARN, or a template reference to one)."""
    return {"Sid": "AssumeBucketRole", "Effect": "Allow", "Action": "sts:AssumeRole", "Resource": role_arn}


def iam_documents(spec: ClusterSpec, partition: str = "aws") -> dict[str, dict[str, Any]]:
    """Every IAM document the spec's bucket grant needs, by name (what `mpicloud render iam` prints)."""
    bucket = spec.s3_bucket
    if bucket is None:
        raise RenderError("the spec has no S3 `bucket:` section, so there is no IAM to render")
    docs = {"bucket-access-policy": bucket_access_policy(bucket, partition)}
    grant = spec.bucket_grant
    if grant == "instance_role":
        docs["node-trust-policy"] = ec2_trust_policy()
    elif grant == "cross_account_role":
        docs["bucket-role-trust-policy"] = cross_account_trust_policy(bucket, partition)
        if bucket.role_arn:
            docs["node-assume-role-policy"] = assume_bucket_role_policy(bucket)
    return docs
