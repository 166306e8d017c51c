"""S3 objects through boto3/s3transfer: parallel multipart transfers, retries, refreshed credentials, region
redirects and path-style addressing for dotted bucket names come from the SDK (node side; bucketio.py).

Credentials and region: the AWS SDK chain (environment, AWS_PROFILE in AWS_CONFIG_FILE, assumed roles with
their ExternalId, the instance role over IMDSv2). Endpoint: AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL or the
profile's endpoint_url (S3-compatible stores and moto), read here too because older SDKs (Debian 12's) ignore
them; with an endpoint, the profile's role is assumed through STS at that endpoint too, never at AWS."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import boto3
import botocore.session
from boto3.exceptions import Boto3Error, RetriesExceededError, S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.credentials import CredentialProvider, RefreshableCredentials
from botocore.exceptions import BotoCoreError, ClientError

from mpicloud.protocol.objects import StoreError

#: parts of a multipart transfer (S3's minimum is 5 MiB); files at least this big are split
PART = max(5, int(os.environ.get("MPICLOUD_S3_PART_MB", "64"))) * 1024 * 1024


#: what a bodiless (HEAD) error status means, in the words S3 uses for the same error with a body
_HEAD_CODES = {"403": "AccessDenied", "404": "NoSuchKey", "301": "PermanentRedirect"}


def _reason(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", "?"))
        return f"{_HEAD_CODES.get(code, code)} {error.get('Message', '')}".strip()
    return str(exc)


class EndpointRoleProvider(CredentialProvider):  # type: ignore[misc]
    """The profile's role (role_arn, external_id) assumed from its source_profile through STS at the store's
    own endpoint, refreshed before it expires."""

    METHOD = "mpicloud-endpoint-role"

    def __init__(self, profile: dict[str, Any], endpoint: str) -> None:
        super().__init__()
        self.profile, self.endpoint = profile, endpoint

    def _fetch(self) -> dict[str, str]:
        source = self.profile.get("source_profile")
        if not source:
            raise StoreError("a role at a custom endpoint needs source_profile in the profile")
        sts = boto3.Session(profile_name=source).client("sts", endpoint_url=self.endpoint,
                                                        region_name=self.profile.get("region") or "us-east-1")
        extra = {"ExternalId": self.profile["external_id"]} if self.profile.get("external_id") else {}
        creds = sts.assume_role(RoleArn=self.profile["role_arn"], RoleSessionName=self.profile.get(
            "role_session_name", "mpicloud"), **extra)["Credentials"]
        return {"access_key": creds["AccessKeyId"], "secret_key": creds["SecretAccessKey"],
                "token": creds["SessionToken"], "expiry_time": creds["Expiration"].isoformat()}

    def load(self) -> RefreshableCredentials:
        return RefreshableCredentials.create_from_metadata(self._fetch(), self._fetch, self.METHOD)


class S3Store:
    """One bucket, as bucketio.Store."""

    def __init__(self, bucket: str) -> None:
        self.bucket = bucket
        core = botocore.session.Session()
        scoped: dict[str, Any] = core.get_scoped_config()
        endpoint = (os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
                    or scoped.get("endpoint_url"))
        if endpoint and scoped.get("role_arn"):
            core.get_component("credential_provider").insert_before(
                "assume-role", EndpointRoleProvider(scoped, endpoint))
        config = Config(retries={"max_attempts": 8, "mode": "standard"},
                        s3={"addressing_style": "path" if "." in bucket else "auto"})
        self.client = boto3.Session(botocore_session=core).client("s3", endpoint_url=endpoint, config=config)
        self.transfer = TransferConfig(multipart_threshold=PART, multipart_chunksize=PART, max_concurrency=8)

    def _url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def list(self, prefix: str) -> list[tuple[str, int]]:
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
            return [(item["Key"], int(item["Size"])) for page in pages for item in page.get("Contents", [])]
        except (ClientError, BotoCoreError) as exc:
            raise StoreError(f"list {self._url(prefix)}: {_reason(exc)}") from None

    def size(self, key: str) -> int:
        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=key)["ContentLength"])
        except (ClientError, BotoCoreError) as exc:
            raise StoreError(f"get {self._url(key)}: {_reason(exc)}") from None

    def download(self, key: str, dest: Path) -> None:
        try:
            self.client.download_file(self.bucket, key, str(dest), Config=self.transfer)
        except RetriesExceededError as exc:
            raise StoreError(f"get {self._url(key)}: gave up after retries ({exc.last_exception})") from None
        except (ClientError, BotoCoreError, Boto3Error) as exc:
            raise StoreError(f"get {self._url(key)}: {_reason(exc)}") from None

    def upload(self, path: Path, key: str) -> None:
        try:
            self.client.upload_file(str(path), self.bucket, key, Config=self.transfer)
        except S3UploadFailedError as exc:
            raise StoreError(f"put {self._url(key)}: {exc}") from None
        except (ClientError, BotoCoreError, Boto3Error) as exc:
            raise StoreError(f"put {self._url(key)}: {_reason(exc)}") from None
