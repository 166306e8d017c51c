"""Spec versions: an ordered chain of small transforms, one per version step."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mpicloud.protocol.jobs import apply_chain
from mpicloud.spec.model import SPEC_VERSION

Transform = Callable[[dict[str, Any]], dict[str, Any]]


def _bucket_kind(document: dict[str, Any]) -> dict[str, Any]:
    """1 -> 2: `bucket` became S3 or Azure Blob; a version-1 bucket is S3."""
    bucket = document.get("bucket")
    if isinstance(bucket, dict) and "kind" not in bucket:
        document = {**document, "bucket": {"kind": "s3", **bucket}}
    return document


def _elastic_nodes(document: dict[str, Any]) -> dict[str, Any]:
    """2 -> 3: `nodes` may also be {min, max} (elastic); a version-2 integer keeps its meaning as it is."""
    return document


# TRANSFORMS[n] upgrades a version-n document to version n+1.
TRANSFORMS: dict[int, Transform] = {1: _bucket_kind, 2: _elastic_nodes}


def upgrade(document: dict[str, Any], chain: dict[int, Transform] | None = None,
            current: int = SPEC_VERSION) -> dict[str, Any]:
    """Upgrade a raw spec document to the current version, or raise ValueError naming the version."""
    steps = TRANSFORMS if chain is None else chain
    version = document.get("version", current)
    if not isinstance(version, int) or version < 1:
        raise ValueError(f"version: {version!r} is not a spec version (1..{current})")
    if version > current:
        raise ValueError(f"version: {version} is newer than this mpicloud understands ({current}); "
                         "upgrade mpicloud")
    return apply_chain(document, steps, version, current)
