"""templates/cloudformation/bucket-access.json: the customer's side of bring-your-own-bucket, from render.iam."""

from __future__ import annotations

import json
from typing import Any

from mpicloud.render.iam import kms_statement, prefix_statements

ARN = "arn:${AWS::Partition}:s3:::${BucketName}"
PREFIX_PATTERN = r"^[^/*][^*]*/$"   # a key prefix ending in '/', no leading '/', no wildcard (see docs)


def _sub(value: Any) -> Any:
    """Wrap every string that references a parameter in Fn::Sub, recursively."""
    if isinstance(value, str):
        return {"Fn::Sub": value} if "${" in value else value
    if isinstance(value, list):
        return [_sub(v) for v in value]
    if isinstance(value, dict):
        return {k: _sub(v) for k, v in value.items()}
    return value


def prefix_policy_statements() -> list[Any]:
    """render.iam's prefix statements over the BucketName/InputPrefix/OutputPrefix parameters (Fn::Sub)."""
    return list(_sub(prefix_statements(ARN, "${InputPrefix}", "${OutputPrefix}")))


def bucket_policies(holders: dict[str, Any]) -> dict[str, Any]:
    """The prefix policy (BucketName/InputPrefix/OutputPrefix parameters) and the KMS policy when a key is given,
    attached to `holders` ({"Users"|"Roles": list or Fn::If}).

    Two managed policies rather than an Fn::If inside one Statement list, and attached from the policy side:
    moto's CloudFormation rejects the former and ignores ManagedPolicyArns on users and roles.
    """
    def policy(statements: list[Any], description: str, **extra: Any) -> dict[str, Any]:
        return {"Type": "AWS::IAM::ManagedPolicy", **extra, "Properties": {
            "Description": description, **holders,
            "PolicyDocument": {"Version": "2012-10-17", "Statement": statements}}}

    return {
        "BucketAccessPolicy": policy(prefix_policy_statements(),
                                     "mpicloud: read the input prefix, read-write the output prefix, nothing else"),
        "BucketKmsPolicy": policy([kms_statement({"Ref": "KmsKeyArn"})], "mpicloud: use the bucket's SSE-KMS key",
                                  Condition="HasKmsKey"),
    }


BUCKET_PARAMETERS: dict[str, Any] = {
    "BucketName": {"Type": "String", "AllowedPattern": r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$",
                   "Description": "Your existing bucket (inputs and outputs stay there)"},
    "InputPrefix": {"Type": "String", "Default": "input/", "AllowedPattern": PREFIX_PATTERN,
                    "Description": "Key prefix the cluster may read (end it with /)"},
    "OutputPrefix": {"Type": "String", "Default": "output/", "AllowedPattern": PREFIX_PATTERN,
                     "Description": "Key prefix the cluster may read and write (end it with /)"},
    "KmsKeyArn": {"Type": "String", "Default": "",
                  "Description": "ARN of the bucket's SSE-KMS key, or empty for SSE-S3"},
}
BUCKET_CONDITIONS: dict[str, Any] = {"HasKmsKey": {"Fn::Not": [{"Fn::Equals": [{"Ref": "KmsKeyArn"}, ""]}]}}


def _tags(name: str) -> list[dict[str, Any]]:
    return [{"Key": "mpicloud:part", "Value": name}, {"Key": "mpicloud:stack", "Value": {"Ref": "AWS::StackName"}}]


def _resources() -> dict[str, Any]:
    user, cross = {"Condition": "IsIamUser"}, {"Condition": "IsCrossAccountRole"}
    return {
        **bucket_policies({
            "Users": {"Fn::If": ["IsIamUser", [{"Ref": "NodeUser"}], {"Ref": "AWS::NoValue"}]},
            "Roles": {"Fn::If": ["IsCrossAccountRole", [{"Ref": "BucketRole"}], {"Ref": "AWS::NoValue"}]}}),
        "NodeUser": {"Type": "AWS::IAM::User", **user, "Properties": {"Tags": _tags("bucket-user")}},
        "NodeKey": {"Type": "AWS::IAM::AccessKey", **user, "Properties": {"UserName": {"Ref": "NodeUser"}}},
        "NodeKeySecret": {"Type": "AWS::SecretsManager::Secret", **user, "Properties": {
            "Description": "mpicloud cluster nodes: access key for the bucket (render the profile from it)",
            "SecretString": {"Fn::Sub": ['{"aws_access_key_id": "${Id}", "aws_secret_access_key": "${Secret}"}',
                                         {"Id": {"Ref": "NodeKey"},
                                          "Secret": {"Fn::GetAtt": ["NodeKey", "SecretAccessKey"]}}]},
            "Tags": _tags("bucket-user-key")}},
        "BucketRole": {"Type": "AWS::IAM::Role", **cross, "Properties": {
            "Description": "mpicloud: assumed by the cluster's nodes with the agreed ExternalId",
            "MaxSessionDuration": 3600,
            "AssumeRolePolicyDocument": {"Version": "2012-10-17", "Statement": [{
                "Effect": "Allow", "Action": "sts:AssumeRole", "Principal": {"AWS": {"Ref": "TrustedPrincipalArn"}},
                "Condition": {"StringEquals": {"sts:ExternalId": {"Ref": "ExternalId"}}}}]},
            "Tags": _tags("bucket-role")}},
    }


def bucket_access_template() -> dict[str, Any]:
    """The whole template: a prefix policy plus an IAM user (key kept in Secrets Manager) or a cross-account role."""
    parameters = {**BUCKET_PARAMETERS,
                  "Grant": {"Type": "String", "AllowedValues": ["iam_user", "cross_account_role"],
                            "Default": "cross_account_role",
                            "Description": "iam_user: an access key for nodes anywhere; cross_account_role: a role "
                                           "the cluster account assumes with an ExternalId"},
                  "TrustedPrincipalArn": {"Type": "String", "Default": "",
                                          "Description": "cross_account_role: the cluster's node role ARN "
                                                         "(or arn:aws:iam::ACCOUNT:root)"},
                  "ExternalId": {"Type": "String", "Default": "", "NoEcho": True,
                                 "AllowedPattern": r"^$|^[\w+=,.@:/-]{2,1224}$",
                                 "Description": "cross_account_role: the ExternalId agreed with the cluster operator"}}
    conditions = {**BUCKET_CONDITIONS,
                  "IsIamUser": {"Fn::Equals": [{"Ref": "Grant"}, "iam_user"]},
                  "IsCrossAccountRole": {"Fn::Equals": [{"Ref": "Grant"}, "cross_account_role"]}}
    outputs = {
        "PolicyArn": {"Value": {"Ref": "BucketAccessPolicy"}, "Description": "the least-privilege bucket policy"},
        "RoleArn": {"Condition": "IsCrossAccountRole", "Value": {"Fn::GetAtt": ["BucketRole", "Arn"]},
                    "Description": "put this in the cluster spec as bucket.role_arn"},
        "KeySecretArn": {"Condition": "IsIamUser", "Value": {"Ref": "NodeKeySecret"},
                         "Description": "aws secretsmanager get-secret-value --secret-id <this> (never an output)"},
    }
    return {"AWSTemplateFormatVersion": "2010-09-09",
            "Description": "mpicloud: least-privilege access for an MPI cluster to your own S3 bucket",
            "Parameters": parameters, "Conditions": conditions, "Resources": _resources(), "Outputs": outputs,
            "Rules": {"CrossAccountNeedsTrust": {
                "RuleCondition": {"Fn::Equals": [{"Ref": "Grant"}, "cross_account_role"]},
                "Assertions": [
                    {"Assert": {"Fn::Not": [{"Fn::Equals": [{"Ref": "TrustedPrincipalArn"}, ""]}]},
                     "AssertDescription": "cross_account_role needs TrustedPrincipalArn"},
                    {"Assert": {"Fn::Not": [{"Fn::Equals": [{"Ref": "ExternalId"}, ""]}]},
                     "AssertDescription": "cross_account_role needs ExternalId"}]}}}


def bucket_access_json() -> str:
    """Deterministic JSON text of the template."""
    return json.dumps(bucket_access_template(), sort_keys=True, indent=2) + "\n"
