"""Spec documents shared by tests."""

from __future__ import annotations

from typing import Any

from mpicloud.spec import ClusterSpec, spec_from_dict

PUBKEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGdy6EN0wVs9sFJ3ebmsL0QoR5z6BAGw9vEGb8VDZX5m test@mpicloud"


def aws_doc(**fields: Any) -> dict[str, Any]:
    """A minimal valid AWS Linux spec document, with fields overridden."""
    return {"name": "cfd", "nodes": 2, "cloud": "aws", "os": "linux", "size": "c5n.large", "region": "eu-west-1",
            "admin": {"ssh_public_key": PUBKEY}, **fields}


def aws_spec(**overrides: Any) -> ClusterSpec:
    """A 3-node AWS spec with a bucket granted through the instance role; keyword arguments override fields."""
    return spec_from_dict(aws_doc(**{
        "name": "demo", "nodes": 3, "slots_per_node": 4, "access": {"allowed_cidrs": ["203.0.113.0/24"]},
        "idle_shutdown_minutes": 30, "bucket": {"name": "my-simulation-data"}, "tags": {"project": "mpicloud-test"},
        **overrides}))
