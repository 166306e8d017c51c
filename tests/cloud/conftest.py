"""Fixtures for the cloud tests: the shared reference material (ARM schemas), the example Azure spec, an AWS spec."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mpicloud.spec import ClusterSpec, load_spec
from tests.specdata import aws_spec

ROOT = Path(__file__).resolve().parents[2]


def shared_dir() -> Path:
    """MPICLOUD_SHARED, or `../shared` beside the checkout."""
    return Path(os.environ.get("MPICLOUD_SHARED") or ROOT.parent / "shared")


@pytest.fixture(scope="session")
def arm_schema_dir() -> Path:
    """`<shared>/schemas/arm`: a failure in CI when missing, a skip with the reason elsewhere."""
    path = shared_dir() / "schemas" / "arm"
    if not (path / "2019-04-01" / "deploymentTemplate.json").is_file():
        message = f"ARM schemas not found at {path} (set MPICLOUD_SHARED to the folder holding schemas/arm)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def azure_spec() -> ClusterSpec:
    """examples/azure-windows.yaml, the default source of the generated ARM template."""
    return load_spec(ROOT / "examples" / "azure-windows.yaml")


@pytest.fixture()
def spec() -> ClusterSpec:
    """The default AWS test spec."""
    return aws_spec()
