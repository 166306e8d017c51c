"""CloudFormation templates made deployable on moto (inside `mock_aws()`), shared by the deploy tests."""

from __future__ import annotations

from typing import Any

import boto3


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
