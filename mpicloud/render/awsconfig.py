"""The AWS `config` + `credentials` pair that gives cluster nodes (and run scripts) the bucket profile."""

from __future__ import annotations

import configparser
import io
from dataclasses import dataclass

from mpicloud.errors import RenderError
from mpicloud.render.iam import bucket_role_arn
from mpicloud.secret import Secret
from mpicloud.spec.model import ClusterSpec

PROFILE = "mpicloud"
BASE_PROFILE = "mpicloud-base"


@dataclass(frozen=True)
class AccessKey:
    """An IAM access key; the secret half never prints."""

    key_id: str
    secret: Secret


@dataclass(frozen=True)
class AwsFiles:
    """`config` (no secrets) and `credentials` (secret, written mode 600; None when the nodes need no key)."""

    config: str
    credentials: Secret | None


def _ini(sections: dict[str, dict[str, str]]) -> str:
    # configparser writes `key = value` lines with no inline comments (botocore would keep them in the value)
    parser = configparser.RawConfigParser()
    for name, values in sections.items():
        parser[name] = values
    buf = io.StringIO()
    parser.write(buf)
    return buf.getvalue().rstrip("\n") + "\n"


def aws_files(spec: ClusterSpec, key: AccessKey | None = None, *, on_ec2: bool | None = None) -> AwsFiles:
    """Render the profile `mpicloud` for the spec's bucket grant.

    instance_role: region (and endpoint) only, credentials come from the instance role through IMDSv2.
    iam_user: the access key in `credentials`.
    cross_account_role: role_arn + external_id, assumed from the instance role on EC2 or from the access key
    (profile mpicloud-base) elsewhere.
    """
    bucket = spec.s3_bucket
    if bucket is None:
        raise RenderError("the spec has no S3 `bucket:` section, so there is no AWS profile to render")
    on_ec2 = spec.cloud == "aws" if on_ec2 is None else on_ec2
    where: dict[str, str] = {"region": bucket.region or spec.region or "us-east-1"}
    if bucket.endpoint_url:
        where["endpoint_url"] = bucket.endpoint_url
    profile = dict(where)
    creds: dict[str, dict[str, str]] = {}
    grant = spec.bucket_grant
    if grant == "cross_account_role":
        profile.update(role_arn=bucket_role_arn(bucket), external_id=bucket.external_id or "",
                       role_session_name=f"mpicloud-{spec.name}")
        if on_ec2:
            profile["credential_source"] = "Ec2InstanceMetadata"
        else:
            profile["source_profile"] = BASE_PROFILE
            creds[BASE_PROFILE] = _key_section(key, "cross_account_role off EC2")
    elif grant == "iam_user":
        creds[PROFILE] = _key_section(key, "iam_user")
    sections = {f"profile {PROFILE}": profile}
    if BASE_PROFILE in creds:
        sections[f"profile {BASE_PROFILE}"] = where
    return AwsFiles(config=_ini(sections), credentials=Secret(_ini(creds)) if creds else None)


def _key_section(key: AccessKey | None, why: str) -> dict[str, str]:
    if key is None:
        raise RenderError(f"bucket grant {why} needs an access key: pass --access-key-id-env and "
                          "--secret-access-key-env naming the environment variables that hold it")
    return {"aws_access_key_id": key.key_id, "aws_secret_access_key": key.secret.reveal()}
