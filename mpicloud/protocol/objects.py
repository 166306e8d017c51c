"""Object-store URLs, read alike by the client (options, sweep columns) and the node (bucketio.py).

`s3://BUCKET/KEY`, `az://ACCOUNT/CONTAINER/PATH` and `https://ACCOUNT.blob.core.windows.net/CONTAINER/PATH`
(turned into the az:// form). A key or prefix ending in '/' names every object under it."""

from __future__ import annotations

import os
import re
import sys
import urllib.parse
from dataclasses import dataclass

_S3 = re.compile(r"^s3://(?P<store>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])/(?P<key>[^\x00-\x1f\x7f]*)$")
_AZ = re.compile(r"^az://(?P<account>[a-z0-9]{3,24})/(?P<store>[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9])"
                 r"(?:/(?P<key>[^\x00-\x1f\x7f]*))?$")
_AZ_HTTPS = re.compile(r"^https://(?P<account>[a-z0-9]{3,24})\.blob\.core\.windows\.net/(?P<rest>.*)$")
#: the container SAS under the runner root (JSON: account, endpoint, sas; mode 600), by `mpicloud bucket install`
BLOB_CONFIG = "azure/blob.json"
#: every scheme a URL option accepts, for messages
EXAMPLES = "s3://bucket/key, az://account/container/path or https://account.blob.core.windows.net/container/path"


class BadObjectURL(ValueError):
    """Not an object URL this version understands."""


class StoreError(Exception):
    """A refused or failed object operation (node side), naming the object and the service's reason."""


@dataclass(frozen=True)
class ObjectURL:
    """One object or prefix: `scheme` s3 or az; `account` only for az; `store` the bucket or container."""

    scheme: str
    account: str
    store: str
    key: str

    @property
    def is_prefix(self) -> bool:
        """An empty key or one ending in '/' names everything under it."""
        return not self.key or self.key.endswith("/")

    @property
    def name(self) -> str:
        """The last path segment (the bucket or container when the key is empty)."""
        return self.key.rstrip("/").rsplit("/", 1)[-1] or self.store

    def __str__(self) -> str:
        if self.scheme == "s3":
            return f"s3://{self.store}/{self.key}"
        return f"az://{self.account}/{self.store}/{self.key}"


def parse(url: str) -> ObjectURL:
    """The URL's parts; BadObjectURL saying what is wrong. An https blob URL is decoded (%20 -> space)."""
    found = _S3.match(url)
    if found:
        return ObjectURL("s3", "", found["store"], found["key"])
    https = _AZ_HTTPS.match(url)
    found = _AZ.match(f"az://{https['account']}/{urllib.parse.unquote(https['rest'])}" if https else url)
    if found:
        return ObjectURL("az", found["account"], found["store"], found["key"] or "")
    raise BadObjectURL(f"{url!r} is not an object URL ({EXAMPLES})")


def is_object_url(text: str) -> bool:
    """True when the text starts like an object URL (then `parse` decides whether it is a good one)."""
    return text.startswith(("s3://", "az://")) or bool(_AZ_HTTPS.match(text))


def use_object_libs(libs: str | None = None) -> None:
    """Put the storage SDKs' directory (`libs`, else MPICLOUD_OBJECT_LIBS) on sys.path, where the node's Python
    lacks them (Windows' embeddable Python: the bootstrap installs them with pip --target)."""
    libs = libs or os.environ.get("MPICLOUD_OBJECT_LIBS")
    if libs and libs not in sys.path:
        sys.path.insert(1, libs)
