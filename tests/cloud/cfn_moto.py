"""CloudFormation templates made deployable on moto (inside `mock_aws()` or against a moto server), a stack created
from one, and the resource types moto skipped: shared by the deploy tests."""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3
from moto import mock_aws


@contextmanager
def mocked_aws() -> Iterator[list[warnings.WarningMessage]]:
    """moto's in-process AWS, every warning recorded (moto warns once for each resource it skips, see skipped_types)."""
    with mock_aws(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught


def for_moto(body: dict[str, Any], region: str, image_parameter: str) -> str:
    """Adapt `body` the way moto needs and publish an AMI under the SSM parameter it resolves; returns the AMI id.

    moto wants an SSM parameter's Tags as a Key/Value list (CloudFormation takes a map) and passes a KMS key's
    Key/Value tags straight to KMS' TagKey/TagValue API."""
    image = boto3.client("ec2", region_name=region).describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    body["Parameters"]["LatestImageId"]["Default"] = image_parameter
    for resource in body["Resources"].values():
        if resource["Type"] == "AWS::SSM::Parameter":
            resource["Properties"]["Tags"] = [{"Key": k, "Value": v}
                                              for k, v in resource["Properties"]["Tags"].items()]
        if resource["Type"] == "AWS::KMS::Key":
            resource["Properties"]["Tags"] = [{"TagKey": t["Key"], "TagValue": t["Value"]}
                                              for t in resource["Properties"]["Tags"]]
    boto3.client("ssm", region_name=region).put_parameter(Name=image_parameter, Value=image, Type="String")
    return image


def create_stack(template: str, stack: str, parameters: dict[str, str], region: str,
                 endpoint: str | None = None) -> tuple[Any, dict[str, Any]]:
    """Create `stack` from the template text with the parameters (inside mock_aws(), or on the moto server at
    `endpoint`); returns the CloudFormation client and the stack, which must be complete."""
    cfn = boto3.client("cloudformation", region_name=region, endpoint_url=endpoint)
    cfn.create_stack(StackName=stack, TemplateBody=template, Capabilities=["CAPABILITY_IAM"],
                     Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()])
    described = cfn.describe_stacks(StackName=stack)["Stacks"][0]
    assert described["StackStatus"] == "CREATE_COMPLETE", described.get("StackStatusReason")
    return cfn, described


def skipped_types(caught: list[warnings.WarningMessage]) -> set[str]:
    """The resource types moto's CloudFormation did not create (it warns once per resource, and goes on)."""
    return {m.group(1) for w in caught if (m := re.search(r"parse (\S+) but it's not supported", str(w.message)))}
