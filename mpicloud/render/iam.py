"""IAM documents for the customer's bucket, from one function used by Pulumi, CloudFormation and tests."""

from __future__ import annotations

from typing import Any

from mpicloud.spec.model import Bucket


def bucket_arn(bucket: Bucket, partition: str = "aws") -> str:
    """ARN of the bucket itself (what ListBucket and GetBucketLocation are authorised on)."""
    return f"arn:{partition}:s3:::{bucket.name}"


def bucket_access_policy(bucket: Bucket, partition: str = "aws") -> dict[str, Any]:
    """Least privilege: list only the two prefixes, read the input prefix, read-write the output prefix."""
    arn = bucket_arn(bucket, partition)
    inp, out = bucket.input_prefix, bucket.output_prefix
    statements: list[dict[str, Any]] = [
        {"Sid": "BucketLocation", "Effect": "Allow", "Action": "s3:GetBucketLocation", "Resource": arn},
        {"Sid": "ListOnlyOurPrefixes", "Effect": "Allow", "Action": "s3:ListBucket", "Resource": arn,
         "Condition": {"StringLike": {"s3:prefix": [inp, f"{inp}*", out, f"{out}*"]}}},
        {"Sid": "ReadInput", "Effect": "Allow", "Action": "s3:GetObject", "Resource": f"{arn}/{inp}*"},
        {"Sid": "ReadWriteOutput", "Effect": "Allow",
         "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject",
                    "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
         "Resource": f"{arn}/{out}*"},
    ]
    if bucket.kms_key_arn:
        statements.append({"Sid": "UseBucketKey", "Effect": "Allow",
                           "Action": ["kms:Decrypt", "kms:GenerateDataKey"], "Resource": bucket.kms_key_arn})
    return {"Version": "2012-10-17", "Statement": statements}


def ec2_trust_policy() -> dict[str, Any]:
    """Trust policy letting EC2 instances assume the node role (instance profile)."""
    return {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]}
