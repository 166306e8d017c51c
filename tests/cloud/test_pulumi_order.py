"""The Pulumi mock tests pass whatever file runs first (each test installs its own mocks)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

AZURE = "tests/cloud/test_azure_pulumi.py"
AWS = "tests/cloud/test_aws_pulumi.py"


def test_azure_file_first_then_aws_in_one_process() -> None:
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           f"{AZURE}::test_nsg_only_from_allowed_cidrs", f"{AZURE}::test_resource_counts",
                           f"{AWS}::test_nodes_in_placement_group_with_imdsv2_encryption_and_fixed_ips",
                           f"{AWS}::test_every_taggable_resource_is_tagged"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "failed" not in done.stdout and " passed" in done.stdout
