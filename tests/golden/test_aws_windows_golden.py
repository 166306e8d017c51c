"""The AWS variant of the Windows bootstrap and its EC2Launch v2 user data match their golden files (embedded payloads
abbreviated to their names).

Regenerate after an intended change: MPICLOUD_UPDATE_GOLDEN=1 pytest tests/golden/test_aws_windows_golden.py
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from mpicloud.render.aws.powershell import user_data
from mpicloud.render.windows_bootstrap import bootstrap_ps1
from mpicloud.spec import load_spec
from tests.golden.test_azure_bootstrap_golden import abbreviated

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).with_name("aws")


@pytest.mark.parametrize(("name", "render"), [
    ("bootstrap.ps1", lambda spec: abbreviated(bootstrap_ps1(spec))),
    # the script's hash changes with every runner edit: the golden user data names it
    ("user-data.yaml", lambda spec: re.sub(r"-ne '[0-9A-F]{64}'", "-ne '<SHA-256 of bootstrap.ps1>'",
                                           user_data(spec))),
])
def test_matches_golden(name: str, render: object) -> None:
    text = render(load_spec(ROOT / "examples" / "aws-windows.yaml"))  # type: ignore[operator]
    if os.environ.get("MPICLOUD_UPDATE_GOLDEN") == "1":
        (GOLDEN / name).write_text(text, encoding="utf-8")
    assert text == (GOLDEN / name).read_text(encoding="utf-8"), \
        "rerun with MPICLOUD_UPDATE_GOLDEN=1 after an intended change"
