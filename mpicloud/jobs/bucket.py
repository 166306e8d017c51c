"""Deliver bucket access to the cluster, where the runner and jobs use it: the AWS profile (config +
credentials) or the Azure Blob SAS (`azure/blob.json`), each written mode 600 and renamed into place."""

from __future__ import annotations

from mpicloud.jobs.remote import QueueHandle
from mpicloud.protocol.objects import BLOB_CONFIG
from mpicloud.render.awsconfig import AwsFiles
from mpicloud.secret import Secret


def install_profile(queue: QueueHandle, files: AwsFiles) -> list[str]:
    """Write `aws/config` and `aws/credentials` (mode 600) under the runner root; returns the paths written.

    The runner points AWS_CONFIG_FILE / AWS_SHARED_CREDENTIALS_FILE / AWS_PROFILE=mpicloud at them for the
    cluster's own s3:// transfers and for every job, so run scripts (aws cli, boto3) use the same profile.
    """
    queue.transport.makedirs(queue.path("aws"))
    written = []
    for name, data in (("config", files.config), ("credentials", files.credentials.reveal()
                                                  if files.credentials else "")):
        target = queue.path("aws", name)
        queue.transport.write_bytes(target + ".tmp", data.encode(), mode=0o600)
        queue.transport.rename(target + ".tmp", target)
        written.append(target)
    return written


def install_blob_config(queue: QueueHandle, config: Secret) -> str:
    """Write `azure/blob.json` (mode 600) under the runner root: the runner points MPICLOUD_BLOB_CONFIG at it
    for az:// inputs and outputs."""
    folder, name = BLOB_CONFIG.split("/")
    queue.transport.makedirs(queue.path(folder))
    target = queue.path(folder, name)
    queue.transport.write_bytes(target + ".tmp", config.reveal().encode(), mode=0o600)
    queue.transport.rename(target + ".tmp", target)
    return target
