"""Azure Blob objects through azure-storage-blob: parallel block uploads and ranged downloads with retries come
from the SDK (node side; bucketio.py).

Credentials: the container SAS in MPICLOUD_BLOB_CONFIG (JSON: account, endpoint, sas; mode 600, installed by
`mpicloud bucket install`), else the VM's managed identity (azure-identity). Endpoint: the config's, else
https://ACCOUNT.blob.core.windows.net."""

from __future__ import annotations

import datetime
import json
import os
import urllib.parse
from pathlib import Path
from typing import Any

from azure.core.exceptions import AzureError, HttpResponseError
from azure.storage.blob import ContainerClient

from mpicloud.protocol.objects import StoreError

#: block size of uploads and ranged downloads
BLOCK = 8 * 1024 * 1024
CONCURRENCY = 4


def _config(account: str) -> dict[str, Any]:
    path = os.environ.get("MPICLOUD_BLOB_CONFIG")
    if not path or not Path(path).is_file():
        return {}
    config: dict[str, Any] = json.loads(Path(path).read_text(encoding="utf-8"))
    if config.get("account") != account:
        raise StoreError(f"no credentials for storage account {account!r}: the installed blob access is for "
                         f"{config.get('account')!r}")
    return config


def _expired(sas: str) -> str:
    """' (the SAS expired at T)' when the SAS's expiry has passed, else ''."""
    expiry = urllib.parse.parse_qs(sas.lstrip("?")).get("se", [""])[0]
    try:
        when = datetime.datetime.fromisoformat(expiry.replace("Z", "+00:00"))
    except ValueError:
        return ""
    return f" (the SAS expired at {expiry})" if when < datetime.datetime.now(datetime.UTC) else ""


class BlobStore:
    """One container, as bucketio.Store."""

    def __init__(self, account: str, container: str) -> None:
        self.account, self.container = account, container
        config = _config(account)
        self.sas: str = config.get("sas") or ""
        credential: Any
        if self.sas:
            credential = self.sas.lstrip("?")
        else:
            from azure.identity import ManagedIdentityCredential
            credential = ManagedIdentityCredential()
        endpoint = config.get("endpoint") or f"https://{account}.blob.core.windows.net"
        self.client = ContainerClient(endpoint, container, credential=credential, max_block_size=BLOCK,
                                      max_single_put_size=BLOCK, max_chunk_get_size=BLOCK)

    def _fail(self, verb: str, key: str, exc: Exception) -> StoreError:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if isinstance(exc, HttpResponseError):
            reason = f"{getattr(exc, 'error_code', None) or exc.status_code} {exc.reason or ''}".strip()
            if exc.status_code == 403 and self.sas:
                reason += _expired(self.sas)
        return StoreError(f"{verb} az://{self.account}/{self.container}/{key}: {reason}")

    def list(self, prefix: str) -> list[tuple[str, int]]:
        try:
            return [(blob.name, int(blob.size)) for blob in self.client.list_blobs(name_starts_with=prefix or None)]
        except AzureError as exc:
            raise self._fail("list", prefix, exc) from None

    def size(self, key: str) -> int:
        try:
            return int(self.client.get_blob_client(key).get_blob_properties().size)
        except AzureError as exc:
            raise self._fail("get", key, exc) from None

    def download(self, key: str, dest: Path) -> None:
        try:
            with open(dest, "xb") as sink:
                self.client.download_blob(key, max_concurrency=CONCURRENCY).readinto(sink)
        except AzureError as exc:
            raise self._fail("get", key, exc) from None

    def upload(self, path: Path, key: str) -> None:
        try:
            with open(path, "rb") as source:
                self.client.upload_blob(key, source, length=path.stat().st_size, overwrite=True,
                                        max_concurrency=CONCURRENCY)
        except AzureError as exc:
            raise self._fail("put", key, exc) from None
