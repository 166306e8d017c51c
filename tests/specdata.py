"""Spec documents shared by tests."""

from __future__ import annotations

from typing import Any

PUBKEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGdy6EN0wVs9sFJ3ebmsL0QoR5z6BAGw9vEGb8VDZX5m test@mpicloud"


def aws_doc(**fields: Any) -> dict[str, Any]:
    """A minimal valid AWS Linux spec document, with fields overridden."""
    return {"name": "cfd", "nodes": 2, "cloud": "aws", "os": "linux", "size": "c5n.large", "region": "eu-west-1",
            "admin": {"ssh_public_key": PUBKEY}, **fields}
