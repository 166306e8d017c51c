"""Fixtures for the cloud renderers: a representative AWS spec."""

from __future__ import annotations

import pytest

from mpicloud.spec import ClusterSpec, spec_from_dict

ADMIN_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGqmpicloudtestkey mpicloud-test"


def aws_spec(**overrides: object) -> ClusterSpec:
    """A 3-node AWS spec with a bucket granted through the instance role; keyword arguments override fields."""
    data: dict[str, object] = {
        "name": "demo", "cloud": "aws", "nodes": 3, "slots_per_node": 4, "size": "c5n.large",
        "region": "eu-west-1", "admin": {"ssh_public_key": ADMIN_KEY},
        "access": {"allowed_cidrs": ["203.0.113.0/24"]}, "idle_shutdown_minutes": 30,
        "bucket": {"name": "my-simulation-data"}, "tags": {"project": "mpicloud-test"},
    }
    data.update(overrides)
    return spec_from_dict(data)


@pytest.fixture()
def spec() -> ClusterSpec:
    """The default AWS test spec."""
    return aws_spec()
