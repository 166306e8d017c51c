"""Spec versions: an ordered chain of small transforms, one per version step."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mpicloud.protocol.jobs import apply_chain
from mpicloud.spec.model import SPEC_VERSION

Transform = Callable[[dict[str, Any]], dict[str, Any]]

# TRANSFORMS[n] upgrades a version-n document to version n+1. Empty while the spec is at version 1.
TRANSFORMS: dict[int, Transform] = {}


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
